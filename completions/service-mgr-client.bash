_service__mgr__client() {
    local i cur prev opts cmd
    COMPREPLY=()
    if [[ "${BASH_VERSINFO[0]}" -ge 4 ]]; then
        cur="$2"
    else
        cur="${COMP_WORDS[COMP_CWORD]}"
    fi
    prev="$3"
    cmd=""
    opts=""

    for i in "${COMP_WORDS[@]:0:COMP_CWORD}"
    do
        case "${cmd},${i}" in
            ",$1")
                cmd="service__mgr__client"
                ;;
            *)
                ;;
        esac
    done

    case "${cmd}" in
        service__mgr__client)
            opts="-w -r -t -D -e -T -N -G -c -s -k -v -h --wait --retries --timeout --debug --endpoint --topic --nodes --glob --cmd --service --batch --batch-wait --fail-fast --job --key --manager-key --format --custom --conf --version --help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 1 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --wait)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -w)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --retries)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -r)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --timeout)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -t)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --endpoint)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -e)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --topic)
                    _service_mgr_targets topics "${cur}"
                    return 0
                    ;;
                -T)
                    _service_mgr_targets topics "${cur}"
                    return 0
                    ;;
                --nodes)
                    _service_mgr_targets nodes "${cur}"
                    return 0
                    ;;
                -N)
                    _service_mgr_targets nodes "${cur}"
                    return 0
                    ;;
                --glob)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -G)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --cmd)
                    COMPREPLY=($(compgen -W "start stop restart reload status" -- "${cur}"))
                    return 0
                    ;;
                -c)
                    COMPREPLY=($(compgen -W "start stop restart reload status" -- "${cur}"))
                    return 0
                    ;;
                --service)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -s)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --batch)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --batch-wait)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --job)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --key)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -k)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --manager-key)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --format)
                    COMPREPLY=($(compgen -W "table json jsonl legacy" -- "${cur}"))
                    return 0
                    ;;
                --conf)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
    esac
}

if [[ "${BASH_VERSINFO[0]}" -eq 4 && "${BASH_VERSINFO[1]}" -ge 4 || "${BASH_VERSINFO[0]}" -gt 4 ]]; then
    complete -F _service__mgr__client -o nosort -o bashdefault -o default service-mgr-client
else
    complete -F _service__mgr__client -o bashdefault -o default service-mgr-client
fi

# -T/-N: the nodes the manager named by -e knows (asked with a 0.3 s limit).
_service_mgr_targets() {
    local what="$1" cur="$2" pre="" line
    read -ra line <<< "${COMP_LINE:0:COMP_POINT}"
    if [[ $what == nodes && $cur == *,* ]]; then
        pre="${cur%,*},"
        cur="${cur##*,}"
    fi
    local IFS=$'\n'
    COMPREPLY=($(compgen -P "$pre" -W "$(SERVICE_MGR_COMPLETE="$what" \
        "${line[0]}" -- "${line[@]}" 2>/dev/null)" -- "$cur"))
}
