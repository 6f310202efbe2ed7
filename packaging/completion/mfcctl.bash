# bash completion for mfcctl(8), the client of the mfcd multicast routing daemon.
# Installed as /usr/share/bash-completion/completions/mfcctl; needs only bash itself.
# Completes commands, actions, options, --output values, interface names (from
# /sys/class/net) for --iif, --oifs, --interface and `vif set`, `default` for --threshold, table
# names (default and those of /etc/iproute2/rt_tables) for --table, and file names for
# `batch` and `import-smcroute`.
# tests/docs/test_completion.py keeps the option lists in step with mfcctl's parser.

_mfcctl_interfaces() {
    local dev
    for dev in /sys/class/net/*; do
        [[ -e $dev ]] && printf '%s\n' "${dev##*/}"
    done
}

# COMPREPLY = the words of $1 (newline-separated) that start with $2, each prefixed by $3.
_mfcctl_reply() {
    local word
    COMPREPLY=()
    while IFS= read -r word; do
        [[ -n $word && $word == "$2"* ]] && COMPREPLY+=("$3$word")
    done <<<"$1"
}

_mfcctl() {
    # Split the line ourselves: COMP_WORDS breaks words at ':' (IPv6) and '='.
    local line=${COMP_LINE:0:COMP_POINT}
    local -a words
    read -r -a words <<<"$line"
    [[ $line == *[[:space:]] || ${#words[@]} -eq 0 ]] && words+=("")
    local cur=${words[-1]}
    local prev=
    ((${#words[@]} > 1)) && prev=${words[-2]}

    # Walk the words before the current one: command, action, positionals, the last option.
    local cmd='' action='' npos=0 in_oifs=0 skip=0 word i
    for ((i = 1; i < ${#words[@]} - 1; i++)); do
        word=${words[i]}
        if ((skip)); then
            skip=0
            continue
        fi
        case $word in
            --oifs) in_oifs=1 ;;
            --socket | -o | --output | -w | --watch | --source | --group | --iif | --threshold | --table | --interface | --seconds | --to)
                in_oifs=0
                skip=1
                ;;
            -*) in_oifs=0 ;;
            *)
                ((in_oifs)) && continue
                if [[ -z $cmd ]]; then
                    cmd=$word
                elif [[ ($cmd == mfc || $cmd == vif) && -z $action ]]; then
                    action=$word
                elif [[ $cmd == mfc && $action == oif ]]; then
                    action="oif $word" # mfc oif add|del
                else
                    ((npos++))
                fi
                ;;
        esac
    done

    # --opt=value: complete the value (bash treats '=' as a word break by default).
    local prefix=
    if [[ $cur == --*=* ]]; then
        prev=${cur%%=*}
        cur=${cur#*=}
        [[ $COMP_WORDBREAKS == *=* ]] || prefix="$prev="
    elif [[ $prev == --*=* ]]; then
        prev=
    fi

    case $prev in
        -o | --output)
            _mfcctl_reply $'table\njson' "$cur" "$prefix"
            return
            ;;
        --iif | --interface)
            _mfcctl_reply "$(_mfcctl_interfaces)" "$cur" "$prefix"
            return
            ;;
        --socket | --to)
            compopt -o filenames 2>/dev/null
            _mfcctl_reply "$(compgen -f -- "$cur")" "$cur" "$prefix"
            return
            ;;
        --threshold)
            _mfcctl_reply default "$cur" "$prefix"
            return
            ;;
        --table)
            local names
            names=$(awk '$1 ~ /^[0-9]+$/ && NF >= 2 { print $2 }' /etc/iproute2/rt_tables 2>/dev/null)
            _mfcctl_reply "default"$'\n'"$names" "$cur" "$prefix"
            return
            ;;
        -w | --watch | --source | --group | --seconds)
            COMPREPLY=()
            return
            ;;
    esac
    if [[ $cur != -* ]] && [[ $prev == --oifs || $in_oifs == 1 ]]; then
        # Interfaces are comma- or space-separated: complete the part after the last comma.
        local head=
        [[ $cur == *,* ]] && head=${cur%,*},
        _mfcctl_reply "$(_mfcctl_interfaces)" "${cur##*,}" "$head"
        return
    fi

    local opts
    case "$cmd $action" in
        " ") opts="-h --help --socket -o --output -n --dry-run -v --verbose --version" ;;
        "mfc add") opts="-h --help --source --group --table --iif --oifs -o --output -n --dry-run -v --verbose" ;;
        "mfc del") opts="-h --help --source --group --table --iif -o --output -n --dry-run -v --verbose" ;;
        "mfc oif") opts="-h --help" ;;
        "mfc oif add" | "mfc oif del") opts="-h --help --source --group --table --oifs -o --output -n --dry-run -v --verbose" ;;
        "show ") opts="-h --help -s --stats -w --watch --table -o --output -v --verbose" ;;
        "join " | "leave ") opts="-h --help --interface --group --source -o --output -n --dry-run -v --verbose" ;;
        "batch ") opts="-h --help --table -o --output -n --dry-run -v --verbose" ;;
        "vif set") opts="-h --help --threshold --table --mrdisc --no-mrdisc -o --output -n --dry-run -v --verbose" ;;
        "vif show") opts="-h --help -s --stats --table -o --output -v --verbose" ;;
        "sync ") opts="-h --help --full -o --output -n --dry-run -v --verbose" ;;
        "flush ") opts="-h --help -o --output -n --dry-run -v --verbose" ;;
        "ping ") opts="-h --help -o --output -v --verbose" ;;
        "diagnose ") opts="-h --help --group --source --table --seconds -o --output -v --verbose" ;;
        "monitor ") opts="-h --help -o --output -v --verbose --reconnect" ;;
        "reload ") opts="-h --help -o --output -n --dry-run -v --verbose" ;;
        "import-smcroute ") opts="-h --help --to --force --table -N --no-default-vifs -o --output" ;;
        *) opts="-h --help" ;;
    esac
    if [[ $cur == -* ]]; then
        _mfcctl_reply "${opts// /$'\n'}" "$cur" ""
        return
    fi

    case "$cmd $action" in
        " ") _mfcctl_reply $'mfc\nshow\nbatch\nvif\nsync\nflush\nping\njoin\nleave\ndiagnose\nmonitor\nreload\nimport-smcroute' "$cur" "" ;;
        "show ") ((npos == 0)) && _mfcctl_reply $'routes\ngroups\ninterfaces' "$cur" "" ;;
        "mfc ") _mfcctl_reply $'add\ndel\noif' "$cur" "" ;;
        "mfc oif") _mfcctl_reply $'add\ndel' "$cur" "" ;;
        "vif ") _mfcctl_reply $'set\nshow' "$cur" "" ;;
        "vif set")
            ((npos == 0)) && _mfcctl_reply "$(_mfcctl_interfaces)" "$cur" ""
            ;;
        "batch " | "import-smcroute ")
            if ((npos == 0)); then
                compopt -o filenames 2>/dev/null
                _mfcctl_reply "$(compgen -f -- "$cur")" "$cur" ""
            fi
            ;;
        *) COMPREPLY=() ;;
    esac
}

complete -F _mfcctl mfcctl
