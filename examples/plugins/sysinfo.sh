#!/bin/sh
# A Warren plugin in shell, with jq (docs/plugins.md): /sysinfo/uptime and
# /sysinfo/disk_free (params: a path). Replies go on stdout, one per line.
while IFS= read -r line; do
	id=$(printf '%s' "$line" | jq -c .id)
	method=$(printf '%s' "$line" | jq -r .method)
	case $method in
	uptime) result=$(cut -d' ' -f1 /proc/uptime) ;;
	disk_free) path=$(printf '%s' "$line" | jq -r '.params // "/"')
		result=$(df -Pk -- "$path" 2>/dev/null | awk 'NR==2 {printf "%.0f", $4 * 1024}') ;;
	esac
	if [ -n "${result:-}" ]; then
		printf '{"id":%s,"result":%s}\n' "$id" "$result"
	else
		printf '{"id":%s,"error":{"code":"bad_request","message":"cannot %s"}}\n' "$id" "$method"
	fi
	result=
done
