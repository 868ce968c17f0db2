#!/usr/bin/env bash
# Proves csi-hostpath against the upstream CSI conformance suite, csi-sanity
# v5.6.0: one run with mount volumes, one with block volumes, each against
# a fresh driver with a fresh state dir. Prints one summary line per run
# and a total; exits non-zero if a spec failed or the driver leaked a
# mount or loop device. Needs root (bind mounts, losetup).
#
# csi-sanity is built once and cached in
# ${CAIRN_TESTENV_CACHE:-$HOME/.cache/cairn-testenv}/csi-sanity-v5.6.0/.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${CAIRN_TESTENV_CACHE:-$HOME/.cache/cairn-testenv}
sanity_version=v5.6.0
sanity_bin=$cache/csi-sanity-$sanity_version/csi-sanity
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-mod=mod -buildvcs=false"

if [ "$(id -u)" -ne 0 ]; then
	echo "sanity.sh: must run as root (bind mounts and loop devices)" >&2
	exit 1
fi

bin_dir=$(mktemp -d "${TMPDIR:-/tmp}/cairn-csi-bin.XXXXXX")
work=""       # the current run's temp dir
driver_pid="" # the current run's driver

# cleanup_run stops the driver and removes everything a run left behind.
# It counts in $leaked the mounts and loop devices it had to remove, since
# a correct driver leaves none once csi-sanity has cleaned up.
leaked=0
cleanup_run() {
	local mp dev
	leaked=0
	if [ -n "$driver_pid" ]; then
		kill -TERM "$driver_pid" 2>/dev/null || true
		wait "$driver_pid" 2>/dev/null || true
		driver_pid=""
	fi
	if [ -n "$work" ] && [ -d "$work" ]; then
		# Deepest mount points first; field 5 of mountinfo is the mount point.
		for mp in $(awk -v w="$work/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo | sort -r); do
			umount "$mp" && leaked=$((leaked + 1))
		done
		for dev in $(losetup --noheadings --output NAME,BACK-FILE | awk -v w="$work/" 'index($2, w) == 1 { print $1 }'); do
			losetup --detach "$dev" && leaked=$((leaked + 1))
		done
		rm -rf "$work"
	fi
	work=""
}

on_exit() {
	cleanup_run
	rm -rf "$bin_dir"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# build_sanity builds csi-sanity through a throwaway module, so that our
# own go.mod does not depend on the test suite.
build_sanity() {
	local tmp gomod line old new
	tmp=$(mktemp -d "${TMPDIR:-/tmp}/cairn-csi-sanity-build.XXXXXX")
	(
		cd "$tmp"
		go mod init x >/dev/null 2>&1
		go get "github.com/kubernetes-csi/csi-test/v5@$sanity_version" 2>&1
		# Replace directives only apply in the main module: copy csi-test's
		# (v5.6.0 has none; a later version might).
		gomod=$(go list -m -f '{{.GoMod}}' github.com/kubernetes-csi/csi-test/v5)
		awk '/^replace[ \t]*\(/ { b = 1; next } b && /^\)/ { b = 0; next }
		     b { print; next } /^replace / { sub(/^replace /, ""); print }' "$gomod" |
			while read -r line; do
				[ -n "$line" ] || continue
				old=$(echo "${line%%=>*}" | xargs | tr ' ' '@')
				new=$(echo "${line#*=>}" | xargs | tr ' ' '@')
				go mod edit -replace="$old=$new"
			done
		go build -trimpath -o "$tmp/csi-sanity" github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity 2>&1
	) >"$tmp/build.log" || {
		echo "sanity.sh: building csi-sanity $sanity_version failed:" >&2
		cat "$tmp/build.log" >&2
		rm -rf "$tmp"
		return 1
	}
	mkdir -p "$(dirname "$sanity_bin")"
	mv "$tmp/csi-sanity" "$sanity_bin.tmp" && mv "$sanity_bin.tmp" "$sanity_bin"
	rm -rf "$tmp"
}

[ -x "$sanity_bin" ] || build_sanity
"$here/build.sh" "$bin_dir"

total_pass=0 total_fail=0 total_skip=0 failed=0

# run_sanity ACCESS_TYPE: one driver, one csi-sanity run.
run_sanity() {
	local access=$1 counts pass fail skip rc=0
	work=$(mktemp -d "${TMPDIR:-/tmp}/cairn-csi-sanity.XXXXXX")
	"$bin_dir/csi-hostpath" --endpoint "unix://$work/csi.sock" --driver-name hostpath.csi.cairn.test \
		--node-id sanity-node --state-dir "$work/state" 2>"$work/driver.log" &
	driver_pid=$!
	for _ in $(seq 100); do
		[ -S "$work/csi.sock" ] && break
		kill -0 "$driver_pid" 2>/dev/null || break
		sleep 0.1
	done
	if [ ! -S "$work/csi.sock" ]; then
		echo "sanity.sh: csi-hostpath did not start:" >&2
		cat "$work/driver.log" >&2
		failed=1
		cleanup_run
		return
	fi

	# Target and staging dirs must not exist yet: csi-sanity creates them.
	"$sanity_bin" --csi.endpoint "$work/csi.sock" --csi.testvolumeaccesstype "$access" \
		--csi.mountdir "$work/target" --csi.stagingdir "$work/staging" \
		--ginkgo.no-color >"$work/sanity.log" 2>&1 || rc=$?

	counts=$(grep -Eo '[0-9]+ Passed \| [0-9]+ Failed \| [0-9]+ Pending \| [0-9]+ Skipped' "$work/sanity.log" | tail -1 || true)
	read -r pass fail skip < <(echo "$counts" | awk '{ print $1+0, $4+0, $10+0 }')
	if [ "$rc" -ne 0 ] || [ -z "$counts" ]; then
		echo "--- csi-sanity ($access) output, from the failure summary ---" >&2
		if grep -q '^Summarizing' "$work/sanity.log"; then
			sed -n '/^Summarizing/,$p' "$work/sanity.log" >&2
		else
			tail -n 80 "$work/sanity.log" >&2
		fi
		echo "--- csi-hostpath log, last 40 lines ---" >&2
		tail -n 40 "$work/driver.log" >&2
		failed=1
		[ "$fail" -gt 0 ] || fail=1 # a crash counts as a failure
	fi

	cleanup_run
	if [ "$leaked" -ne 0 ]; then
		echo "sanity.sh: $access run left $leaked mount(s)/loop device(s) behind" >&2
		failed=1
	fi
	echo "$access: $pass passed, $fail failed, $skip skipped"
	total_pass=$((total_pass + pass)) total_fail=$((total_fail + fail)) total_skip=$((total_skip + skip))
}

run_sanity mount
run_sanity block
echo "csi-sanity: $total_pass passed, $total_fail failed, $total_skip skipped"
exit "$failed"
