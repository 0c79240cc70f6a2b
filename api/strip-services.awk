# Copies a .proto without its `service Name { ... }` blocks and without proto3 `optional`
# labels, for protoc-c.
#
# protoc-c turns every rpc into a member of its own service stub struct, so `rpc Register`
# becomes `register`, a C keyword, and the header does not compile. grpc core never uses those
# stubs; we only need the messages. Brace depth is counted outside `//` comments, so rpc bodies
# (`{}` or option blocks) are handled. Removed lines become empty lines: protoc-c's error
# messages keep the original line numbers.
#
# protoc-c 1.4.1 also refuses proto3 `optional` fields (and grpc_tools' bundled protoc 3.5.1
# does not parse them). Dropping the label keeps the same number, type and wire encoding; only
# the has-presence bit for an empty value is lost, which nothing in vmgpu reads.
#
# A field named `linux` (CRI's PodSandboxConfig.linux, PodSandboxStatus.linux) would be a C
# member named `linux`, which gcc predefines as the macro 1 in the project's gnu17 mode; it is
# renamed `linux_` here (`unix` likewise), the way protoc-c itself turns `namespace` into
# `namespace_`. Only the C name changes: the number, type and wire encoding do not.
#
# Usage: awk [-v out=STRIPPED.proto] [-v keep_services=1] -f strip-services.awk ORIGINAL.proto
#   out            write there instead of stdout
#   keep_services  only drop the `optional` labels (for grpc_tools' old protoc)
function emit(s) {
	if (out != "")
		print s > out
	else
		print s
}
{
	code = $0
	sub(/\/\/.*/, "", code)
	if (code ~ /^[ \t]*optional[ \t]/) {
		line = $0
		sub(/optional[ \t]+/, "", line)
		$0 = line
	}
	if (!keep_services && code ~ /^[ \t]*[A-Za-z_][A-Za-z0-9_.]*[ \t]+(linux|unix)[ \t]*=/) {
		line = $0
		sub(/[ \t]linux[ \t]*=/, " linux_ =", line)
		sub(/[ \t]unix[ \t]*=/, " unix_ =", line)
		$0 = line
	}
	if (!keep_services && !skipping && code ~ /^[ \t]*service[ \t]+[A-Za-z_][A-Za-z0-9_]*[ \t]*(\{|$)/) {
		skipping = 1
		depth = 0
		opened = 0
		start = FNR
	}
	if (skipping) {
		n_open = gsub(/\{/, "{", code)
		n_close = gsub(/\}/, "}", code)
		depth += n_open - n_close
		if (n_open > 0)
			opened = 1
		if (opened && depth <= 0)
			skipping = 0
		emit("")
		next
	}
	emit($0)
}
END {
	if (skipping) {
		printf "%s:%d: unterminated service block\n", FILENAME, start > "/dev/stderr"
		exit 1
	}
	if (out != "")
		close(out)
}
