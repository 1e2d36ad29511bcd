#!/usr/bin/env bash
# Reads pip's output on stdin and shows its progress: on a terminal one line that updates in place
# ("[12] Collecting fastapi"), elsewhere one line per ten packages, so a minute of installing is never
# silent and never floods a log. The full output goes to the install log (tee) before it gets here.
n=0
tty=0
[ -t 1 ] && tty=1
while IFS= read -r line; do
    case "$line" in
        Collecting*|Downloading*|Building*|Installing\ collected*|Successfully\ installed*) ;;
        *) continue ;;
    esac
    case "$line" in Collecting*) n=$((n + 1)) ;; esac
    short="${line:0:90}"
    if [ "$tty" = 1 ]; then
        printf '\r\033[K  [%d] %s' "$n" "$short"
    else
        case "$line" in
            Collecting*) [ $((n % 10)) = 1 ] && echo "  [$n] $short" ;;
            Installing\ collected*) echo "  installing $n packages" ;;
        esac
    fi
done
[ "$tty" = 1 ] && printf '\r\033[K'
exit 0
