complete -c service-mgr-agentd -s p -l pidfile -d 'Pid file [default with -d: /var/run/service-mgr/PROGRAM.pid; none in the foreground]' -r -F
complete -c service-mgr-agentd -s f -l file -d 'Config file, TOML or 0.1 INI [default: /etc/service-mgr/PROGRAM.conf, if it exists]' -r -F
complete -c service-mgr-agentd -s o -l output -d 'Log file [default: stderr; with -d: /var/log/service-mgr/PROGRAM.log]' -r -F
complete -c service-mgr-agentd -s e -l endpoint -d 'Management endpoint to send `stop`/`status` to [default: from the config, on localhost]' -r
complete -c service-mgr-agentd -s O -l set -d 'Override a config key (repeatable), e.g. -O frontend_endpoint=tcp://127.0.0.1:5500' -r
complete -c service-mgr-agentd -s k -l key -d 'stop: the client key that signs the shutdown [default: as the client\'s]' -r -F
complete -c service-mgr-agentd -l ready-file -d 'Once every socket is bound, write the bound endpoints as JSON to this file' -r -F
complete -c service-mgr-agentd -s n -l node -d 'This node\'s name (config `node`) [default: the host name]' -r
complete -c service-mgr-agentd -l topics -d 'Extra topics, comma-separated (config `topics`)' -r
complete -c service-mgr-agentd -l simulate -d 'Load testing: host N simulated agents in this process, each with its own connections and the real protocol, answering from a built-in fake service manager' -r
complete -c service-mgr-agentd -l node-prefix -d 'Node names of simulated agents: PREFIX0001, PREFIX0002, ...' -r
complete -c service-mgr-agentd -s d -l daemon -d 'Detach and run in the background (writes the pid file)'
complete -c service-mgr-agentd -s D -l debug -d 'Debug output'
complete -c service-mgr-agentd -s v -l version -d 'Print version and exit'
complete -c service-mgr-agentd -s h -l help -d 'Print help (see more with \'--help\')'
