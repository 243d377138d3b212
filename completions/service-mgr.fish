# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_service_mgr_global_optspecs
    string join \n install-links= v/version h/help
end

function __fish_service_mgr_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_service_mgr_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_service_mgr_using_subcommand
    set -l cmd (__fish_service_mgr_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c service-mgr -n "__fish_service_mgr_needs_command" -l install-links -d 'Create the link names (service-mgrd, service-mgr-agentd, service-mgr-client) in DIR' -r -F
complete -c service-mgr -n "__fish_service_mgr_needs_command" -s v -l version -d 'Print version and exit'
complete -c service-mgr -n "__fish_service_mgr_needs_command" -s h -l help -d 'Print help'
complete -c service-mgr -n "__fish_service_mgr_needs_command" -f -a "daemon" -d 'Run or control the manager daemon (as service-mgrd)'
complete -c service-mgr -n "__fish_service_mgr_needs_command" -f -a "agent" -d 'Run or control an agent (as service-mgr-agentd)'
complete -c service-mgr -n "__fish_service_mgr_needs_command" -f -a "client" -d 'Send a service request (as service-mgr-client)'
complete -c service-mgr -n "__fish_service_mgr_needs_command" -f -a "mgmt" -d 'Send a management command to a manager or an agent'
complete -c service-mgr -n "__fish_service_mgr_needs_command" -f -a "demo" -d 'Start a manager and an agent on loopback, ask for one service\'s status, print it, stop'
complete -c service-mgr -n "__fish_service_mgr_needs_command" -f -a "install-links" -d 'Create the link names in DIR (same as --install-links)'
complete -c service-mgr -n "__fish_service_mgr_needs_command" -f -a "keygen" -d 'Make a key pair for a client, an agent or a manager'
complete -c service-mgr -n "__fish_service_mgr_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c service-mgr -n "__fish_service_mgr_using_subcommand daemon" -s p -l pidfile -d 'Pid file [default with -d: /var/run/service-mgr/PROGRAM.pid; none in the foreground]' -r -F
complete -c service-mgr -n "__fish_service_mgr_using_subcommand daemon" -s f -l file -d 'Config file, TOML or 0.1 INI [default: /etc/service-mgr/PROGRAM.conf, if it exists]' -r -F
complete -c service-mgr -n "__fish_service_mgr_using_subcommand daemon" -s o -l output -d 'Log file [default: stderr; with -d: /var/log/service-mgr/PROGRAM.log]' -r -F
complete -c service-mgr -n "__fish_service_mgr_using_subcommand daemon" -s e -l endpoint -d 'Management endpoint to send `stop`/`status` to [default: from the config, on localhost]' -r
complete -c service-mgr -n "__fish_service_mgr_using_subcommand daemon" -s O -l set -d 'Override a config key (repeatable), e.g. -O frontend_endpoint=tcp://127.0.0.1:5500' -r
complete -c service-mgr -n "__fish_service_mgr_using_subcommand daemon" -s k -l key -d 'stop: the client key that signs the shutdown [default: as the client\'s]' -r -F
complete -c service-mgr -n "__fish_service_mgr_using_subcommand daemon" -l ready-file -d 'Once every socket is bound, write the bound endpoints as JSON to this file' -r -F
complete -c service-mgr -n "__fish_service_mgr_using_subcommand daemon" -s d -l daemon -d 'Detach and run in the background (writes the pid file)'
complete -c service-mgr -n "__fish_service_mgr_using_subcommand daemon" -s D -l debug -d 'Debug output'
complete -c service-mgr -n "__fish_service_mgr_using_subcommand daemon" -s v -l version -d 'Print version and exit'
complete -c service-mgr -n "__fish_service_mgr_using_subcommand daemon" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c service-mgr -n "__fish_service_mgr_using_subcommand agent" -s p -l pidfile -d 'Pid file [default with -d: /var/run/service-mgr/PROGRAM.pid; none in the foreground]' -r -F
complete -c service-mgr -n "__fish_service_mgr_using_subcommand agent" -s f -l file -d 'Config file, TOML or 0.1 INI [default: /etc/service-mgr/PROGRAM.conf, if it exists]' -r -F
complete -c service-mgr -n "__fish_service_mgr_using_subcommand agent" -s o -l output -d 'Log file [default: stderr; with -d: /var/log/service-mgr/PROGRAM.log]' -r -F
complete -c service-mgr -n "__fish_service_mgr_using_subcommand agent" -s e -l endpoint -d 'Management endpoint to send `stop`/`status` to [default: from the config, on localhost]' -r
complete -c service-mgr -n "__fish_service_mgr_using_subcommand agent" -s O -l set -d 'Override a config key (repeatable), e.g. -O frontend_endpoint=tcp://127.0.0.1:5500' -r
complete -c service-mgr -n "__fish_service_mgr_using_subcommand agent" -s k -l key -d 'stop: the client key that signs the shutdown [default: as the client\'s]' -r -F
complete -c service-mgr -n "__fish_service_mgr_using_subcommand agent" -l ready-file -d 'Once every socket is bound, write the bound endpoints as JSON to this file' -r -F
complete -c service-mgr -n "__fish_service_mgr_using_subcommand agent" -s n -l node -d 'This node\'s name (config `node`) [default: the host name]' -r
complete -c service-mgr -n "__fish_service_mgr_using_subcommand agent" -l topics -d 'Extra topics, comma-separated (config `topics`)' -r
complete -c service-mgr -n "__fish_service_mgr_using_subcommand agent" -l simulate -d 'Load testing: host N simulated agents in this process, each with its own connections and the real protocol, answering from a built-in fake service manager' -r
complete -c service-mgr -n "__fish_service_mgr_using_subcommand agent" -l node-prefix -d 'Node names of simulated agents: PREFIX0001, PREFIX0002, ...' -r
complete -c service-mgr -n "__fish_service_mgr_using_subcommand agent" -s d -l daemon -d 'Detach and run in the background (writes the pid file)'
complete -c service-mgr -n "__fish_service_mgr_using_subcommand agent" -s D -l debug -d 'Debug output'
complete -c service-mgr -n "__fish_service_mgr_using_subcommand agent" -s v -l version -d 'Print version and exit'
complete -c service-mgr -n "__fish_service_mgr_using_subcommand agent" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c service-mgr -n "__fish_service_mgr_using_subcommand client" -s w -l wait -d 'Seconds to wait for results at most [default: 60 when the manager says which nodes will answer (the client returns as soon as they all did); 0.1 against a 0.1 manager]' -r
complete -c service-mgr -n "__fish_service_mgr_using_subcommand client" -s r -l retries -d 'Tries to reach the manager [default: 3]' -r
complete -c service-mgr -n "__fish_service_mgr_using_subcommand client" -s t -l timeout -d 'Milliseconds to wait for the manager\'s answer per try [default: 1000]' -r
complete -c service-mgr -n "__fish_service_mgr_using_subcommand client" -s e -l endpoint -d 'The manager\'s frontend endpoint, else `endpoint` in client.conf [default: tcp://localhost:5500] ($SERVICE_MGR_PORT moves the default port). Several managers comma-separated: the first that answers is asked, and a job whose manager goes away continues through another' -r
complete -c service-mgr -n "__fish_service_mgr_using_subcommand client" -s T -l topic -d 'Who runs it: `any`, an OS name (`Linux`, `FreeBSD`), a node name or a custom topic [default with -N or -G: any]' -r -f -a "(__fish_service_mgr_targets topics)"
complete -c service-mgr -n "__fish_service_mgr_using_subcommand client" -s N -l nodes -d 'Only these nodes (comma-separated), combined with -T' -r -f -a "(__fish_service_mgr_targets nodes)"
complete -c service-mgr -n "__fish_service_mgr_using_subcommand client" -s G -l glob -d 'Only registered nodes whose name matches this glob (e.g. \'web*\'), combined with -T and -N' -r
complete -c service-mgr -n "__fish_service_mgr_using_subcommand client" -s c -l cmd -d 'The service command: start, stop, restart, reload or status' -r -f -a "start\t''
stop\t''
restart\t''
reload\t''
status\t''"
complete -c service-mgr -n "__fish_service_mgr_using_subcommand client" -s s -l service -d 'The service\'s name' -r
complete -c service-mgr -n "__fish_service_mgr_using_subcommand client" -l batch -d 'Run on at most N nodes at a time (N or N%): a rolling restart' -r
complete -c service-mgr -n "__fish_service_mgr_using_subcommand client" -l batch-wait -d 'Seconds to pause between batches' -r
complete -c service-mgr -n "__fish_service_mgr_using_subcommand client" -l job -d 'Show an earlier job by its id (its results so far, then any still to come)' -r
complete -c service-mgr -n "__fish_service_mgr_using_subcommand client" -s k -l key -d 'The client key that signs requests [default: $SERVICE_MGR_KEY, else ~/.config/service-mgr/client.key if it exists; without a key, or with SERVICE_MGR_KEY=none, requests go unsigned]' -r -F
complete -c service-mgr -n "__fish_service_mgr_using_subcommand client" -l manager-key -d 'The manager\'s public key, pinned (a manager.key.pub file or its line; `plaintext` for a 0.1 or allow_unsigned manager) [default: $SERVICE_MGR_MANAGER_KEY, else ~/.config/service-mgr/manager.key.pub, else that of a manager on this host]' -r
complete -c service-mgr -n "__fish_service_mgr_using_subcommand client" -l format -d 'Output format [default: table on a terminal; when piped, legacy as service-mgr-client (0.1\'s output) and json as service-mgr client]' -r -f -a "table\t'For people: node, system, status, return code, time, first line of output; a summary'
json\t'One JSON document: job, request, expected nodes, summary, every node\'s result'
jsonl\t'One JSON object per line, each result as it arrives, then a summary line'
legacy\t'0.1\'s output: a JSON array of the results (plus entries for silent nodes)'"
complete -c service-mgr -n "__fish_service_mgr_using_subcommand client" -l conf -d 'The client config file to read instead of /etc/service-mgr/client.conf and ~/.config/service-mgr/client.conf [default: $SERVICE_MGR_CLIENT_CONF; `none` reads none]. Options on the command line win over it' -r -F
complete -c service-mgr -n "__fish_service_mgr_using_subcommand client" -s D -l debug -d 'Debug output on stderr'
complete -c service-mgr -n "__fish_service_mgr_using_subcommand client" -l fail-fast -d 'Stop the rollout after the first batch in which a node did not succeed'
complete -c service-mgr -n "__fish_service_mgr_using_subcommand client" -l custom -d 'Send a command beyond start, stop, restart, reload and status (one the agents declare in their custom_commands, e.g. condrestart)'
complete -c service-mgr -n "__fish_service_mgr_using_subcommand client" -s v -l version -d 'Print version and exit'
complete -c service-mgr -n "__fish_service_mgr_using_subcommand client" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c service-mgr -n "__fish_service_mgr_using_subcommand mgmt" -s e -l endpoint -d 'Management endpoint of a manager (port 5800) or an agent (port 6000); $SERVICE_MGR_PORT moves the default with the other ports' -r
complete -c service-mgr -n "__fish_service_mgr_using_subcommand mgmt" -s t -l timeout -d 'Milliseconds to wait for the answer per try' -r
complete -c service-mgr -n "__fish_service_mgr_using_subcommand mgmt" -s r -l retries -d 'Tries' -r
complete -c service-mgr -n "__fish_service_mgr_using_subcommand mgmt" -s k -l key -d 'Client key to sign commands that change something (shutdown) [default: as the client\'s]' -r -F
complete -c service-mgr -n "__fish_service_mgr_using_subcommand mgmt" -l server-key -l manager-key -d 'The daemon\'s public key, pinned: for the manager as the client\'s --manager-key; for an agent its agent.key.pub (file or line) [default: the key_file of the local config]; `plaintext` for a 0.1 or allow_unsigned daemon' -r
complete -c service-mgr -n "__fish_service_mgr_using_subcommand mgmt" -l keys-dir -d 'keys: the manager\'s key store [default: keys in the manager\'s state_dir]' -r -F
complete -c service-mgr -n "__fish_service_mgr_using_subcommand mgmt" -s f -l file -d 'keys: the manager\'s config file, to find its state_dir' -r -F
complete -c service-mgr -n "__fish_service_mgr_using_subcommand mgmt" -l limit -d 'jobs: jobs per page [default: 50, at most 1000]; job: results per page [default: 1000]. A page that is not the last says where the next starts' -r
complete -c service-mgr -n "__fish_service_mgr_using_subcommand mgmt" -l offset -d 'jobs, job, history: skip the first N (newest jobs; results by node): the next page' -r
complete -c service-mgr -n "__fish_service_mgr_using_subcommand mgmt" -l node -d 'history: only this node\'s answers' -r
complete -c service-mgr -n "__fish_service_mgr_using_subcommand mgmt" -l service -d 'history: only requests for this service' -r
complete -c service-mgr -n "__fish_service_mgr_using_subcommand mgmt" -l since -d 'history: only requests since T: a time ago (30m, 12h, 7d, 2w) or a UTC date (2026-11-24, 2026-11-24T08:00, 2026-11-24T08:00:00)' -r
complete -c service-mgr -n "__fish_service_mgr_using_subcommand mgmt" -l client -d 'history: only requests signed by this client key (its name, key id or public key line)' -r
complete -c service-mgr -n "__fish_service_mgr_using_subcommand mgmt" -l format -d 'Output format [default for the short names: table on a terminal, else json; full command names print the JSON reply, as 0.1 did]' -r -f -a "table\t'A table for people'
json\t'The reply as JSON, as 0.1 printed it'"
complete -c service-mgr -n "__fish_service_mgr_using_subcommand mgmt" -l force -d 'keys accept|import: accept an agent key whose node name an accepted key holds (a reinstalled node), rejecting that key: one node, one key'
complete -c service-mgr -n "__fish_service_mgr_using_subcommand mgmt" -s v -l version -d 'Print version and exit'
complete -c service-mgr -n "__fish_service_mgr_using_subcommand mgmt" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c service-mgr -n "__fish_service_mgr_using_subcommand demo" -s s -l service -d 'The service to ask about [default: the first of ssh, sshd, cron, crond, dbus that this host has]' -r
complete -c service-mgr -n "__fish_service_mgr_using_subcommand demo" -s c -l cmd -d 'The command to send (status is harmless; the demo refuses anything else unless --any-command)' -r
complete -c service-mgr -n "__fish_service_mgr_using_subcommand demo" -s D -l debug -d 'Debug output of the demo\'s manager and agent on stderr'
complete -c service-mgr -n "__fish_service_mgr_using_subcommand demo" -s v -l version -d 'Print version and exit'
complete -c service-mgr -n "__fish_service_mgr_using_subcommand demo" -s h -l help -d 'Print help'
complete -c service-mgr -n "__fish_service_mgr_using_subcommand install-links" -s h -l help -d 'Print help'
complete -c service-mgr -n "__fish_service_mgr_using_subcommand keygen" -l role -d 'Whose key: client (signs requests), agent (one per node), manager' -r -f -a "client\t''
agent\t''
manager\t''"
complete -c service-mgr -n "__fish_service_mgr_using_subcommand keygen" -l name -d 'The key\'s name: for an agent its node name [default: user@host for a client, the host name otherwise]' -r
complete -c service-mgr -n "__fish_service_mgr_using_subcommand keygen" -s o -l output -d 'Secret key file (mode 0600); the public key goes to FILE.pub [default: client.key or agent.key in ~/.config/service-mgr or /etc/service-mgr]' -r -F
complete -c service-mgr -n "__fish_service_mgr_using_subcommand keygen" -l force -d 'Replace an existing key file'
complete -c service-mgr -n "__fish_service_mgr_using_subcommand keygen" -s v -l version -d 'Print version and exit'
complete -c service-mgr -n "__fish_service_mgr_using_subcommand keygen" -s h -l help -d 'Print help'
complete -c service-mgr -n "__fish_service_mgr_using_subcommand help; and not __fish_seen_subcommand_from daemon agent client mgmt demo install-links keygen help" -f -a "daemon" -d 'Run or control the manager daemon (as service-mgrd)'
complete -c service-mgr -n "__fish_service_mgr_using_subcommand help; and not __fish_seen_subcommand_from daemon agent client mgmt demo install-links keygen help" -f -a "agent" -d 'Run or control an agent (as service-mgr-agentd)'
complete -c service-mgr -n "__fish_service_mgr_using_subcommand help; and not __fish_seen_subcommand_from daemon agent client mgmt demo install-links keygen help" -f -a "client" -d 'Send a service request (as service-mgr-client)'
complete -c service-mgr -n "__fish_service_mgr_using_subcommand help; and not __fish_seen_subcommand_from daemon agent client mgmt demo install-links keygen help" -f -a "mgmt" -d 'Send a management command to a manager or an agent'
complete -c service-mgr -n "__fish_service_mgr_using_subcommand help; and not __fish_seen_subcommand_from daemon agent client mgmt demo install-links keygen help" -f -a "demo" -d 'Start a manager and an agent on loopback, ask for one service\'s status, print it, stop'
complete -c service-mgr -n "__fish_service_mgr_using_subcommand help; and not __fish_seen_subcommand_from daemon agent client mgmt demo install-links keygen help" -f -a "install-links" -d 'Create the link names in DIR (same as --install-links)'
complete -c service-mgr -n "__fish_service_mgr_using_subcommand help; and not __fish_seen_subcommand_from daemon agent client mgmt demo install-links keygen help" -f -a "keygen" -d 'Make a key pair for a client, an agent or a manager'
complete -c service-mgr -n "__fish_service_mgr_using_subcommand help; and not __fish_seen_subcommand_from daemon agent client mgmt demo install-links keygen help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c service-mgr -n "__fish_service_mgr_using_subcommand mgmt" -f -a "agents jobs job history status shutdown keys manager.status manager.shutdown manager.agents manager.jobs manager.job manager.forget manager.history agent.status agent.shutdown"

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
