complete -c service-mgr-client -s w -l wait -d 'Seconds to wait for results at most [default: 60 when the manager says which nodes will answer (the client returns as soon as they all did); 0.1 against a 0.1 manager]' -r
complete -c service-mgr-client -s r -l retries -d 'Tries to reach the manager [default: 3]' -r
complete -c service-mgr-client -s t -l timeout -d 'Milliseconds to wait for the manager\'s answer per try [default: 1000]' -r
complete -c service-mgr-client -s e -l endpoint -d 'The manager\'s frontend endpoint, else `endpoint` in client.conf [default: tcp://localhost:5500] ($SERVICE_MGR_PORT moves the default port). Several managers comma-separated: the first that answers is asked, and a job whose manager goes away continues through another' -r
complete -c service-mgr-client -s T -l topic -d 'Who runs it: `any`, an OS name (`Linux`, `FreeBSD`), a node name or a custom topic [default with -N or -G: any]' -r -f -a "(__fish_service_mgr_targets topics)"
complete -c service-mgr-client -s N -l nodes -d 'Only these nodes (comma-separated), combined with -T' -r -f -a "(__fish_service_mgr_targets nodes)"
complete -c service-mgr-client -s G -l glob -d 'Only registered nodes whose name matches this glob (e.g. \'web*\'), combined with -T and -N' -r
complete -c service-mgr-client -s c -l cmd -d 'The service command: start, stop, restart, reload or status' -r -f -a "start\t''
stop\t''
restart\t''
reload\t''
status\t''"
complete -c service-mgr-client -s s -l service -d 'The service\'s name' -r
complete -c service-mgr-client -l batch -d 'Run on at most N nodes at a time (N or N%): a rolling restart' -r
complete -c service-mgr-client -l batch-wait -d 'Seconds to pause between batches' -r
complete -c service-mgr-client -l job -d 'Show an earlier job by its id (its results so far, then any still to come)' -r
complete -c service-mgr-client -s k -l key -d 'The client key that signs requests [default: $SERVICE_MGR_KEY, else ~/.config/service-mgr/client.key if it exists; without a key, or with SERVICE_MGR_KEY=none, requests go unsigned]' -r -F
complete -c service-mgr-client -l manager-key -d 'The manager\'s public key, pinned (a manager.key.pub file or its line; `plaintext` for a 0.1 or allow_unsigned manager) [default: $SERVICE_MGR_MANAGER_KEY, else ~/.config/service-mgr/manager.key.pub, else that of a manager on this host]' -r
complete -c service-mgr-client -l format -d 'Output format [default: table on a terminal; when piped, legacy as service-mgr-client (0.1\'s output) and json as service-mgr client]' -r -f -a "table\t'For people: node, system, status, return code, time, first line of output; a summary'
json\t'One JSON document: job, request, expected nodes, summary, every node\'s result'
jsonl\t'One JSON object per line, each result as it arrives, then a summary line'
legacy\t'0.1\'s output: a JSON array of the results (plus entries for silent nodes)'"
complete -c service-mgr-client -l conf -d 'The client config file to read instead of /etc/service-mgr/client.conf and ~/.config/service-mgr/client.conf [default: $SERVICE_MGR_CLIENT_CONF; `none` reads none]. Options on the command line win over it' -r -F
complete -c service-mgr-client -s D -l debug -d 'Debug output on stderr'
complete -c service-mgr-client -l fail-fast -d 'Stop the rollout after the first batch in which a node did not succeed'
complete -c service-mgr-client -l custom -d 'Send a command beyond start, stop, restart, reload and status (one the agents declare in their custom_commands, e.g. condrestart)'
complete -c service-mgr-client -s v -l version -d 'Print version and exit'
complete -c service-mgr-client -s h -l help -d 'Print help (see more with \'--help\')'

# -T/-N: the nodes the manager named by -e knows (asked with a 0.3 s limit).
function __fish_service_mgr_targets
    set -l line (commandline -opc)
    set -l pre ''
    if test "$argv[1]" = nodes
        set pre (string replace -r '[^,]*$' '' -- (commandline -ct))
    end
    for n in (env SERVICE_MGR_COMPLETE=$argv[1] $line[1] -- $line 2>/dev/null)
        echo $pre$n
    end
end
