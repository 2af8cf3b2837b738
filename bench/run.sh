#!/usr/bin/env bash
# petrel against Postfix, side by side on this machine (issue 5).  See bench/README.md.
#
#   make bench                       full run: every load, median of 3 runs
#   BENCH_QUICK=1 make bench         smoke run: 1 run, fewer messages and sessions
#   BENCH_RUNS=5 BENCH_LOADS="A Ad" ./bench/run.sh
#
# Everything this script starts runs in a process group of its own (setsid) and is stopped
# by that group's id; the work directory under /tmp is removed at exit (BENCH_KEEP=1 keeps
# it).  The table goes to stdout, progress to stderr.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PETREL=$ROOT/build/petrel
PF_MASTER=/usr/lib/postfix/sbin/master

say() { printf 'bench: %s\n' "$*" >&2; }
die() { say "FATAL: $*"; exit 1; }

# ----------------------------------------------------------------------------- parameters
QUICK=${BENCH_QUICK:-0}
if [ "$QUICK" = 1 ]; then
	RUNS=${BENCH_RUNS:-1}
	N_A=2000        # messages in loads A, A-d, C
	N_B=300         # messages in load B
	N_IDLE_C=200    # idle sessions held during load C
	N_D=1000        # idle sessions held against petrel in load D
	N_D_PF=100      # ... against Postfix (a process each), extrapolated
	DLV_TIMEOUT=120
else
	RUNS=${BENCH_RUNS:-3}
	N_A=20000
	N_B=3000
	N_IDLE_C=1000
	N_D=10000
	N_D_PF=200
	DLV_TIMEOUT=600
fi
N_D_FULL=$N_D
LOADS=${BENCH_LOADS:-"A Ad B C D E"}
SINK_LOADS="A Ad B"   # loads also run against smtp-sink (protocol only, no disk): the ceiling

# ----------------------------------------------------------------------------- dependencies
need_root() { [ "$(id -u)" = 0 ] || die "run as root (installs packages, starts Postfix)"; }

install_deps() {
	local pkgs=()
	{ command -v smtp-source && command -v smtp-sink && [ -x "$PF_MASTER" ]; } >/dev/null 2>&1 ||
		pkgs+=(postfix)
	command -v python3 >/dev/null 2>&1 || pkgs+=(python3)
	command -v setsid >/dev/null 2>&1 || pkgs+=(util-linux)
	command -v timeout >/dev/null 2>&1 || pkgs+=(coreutils)
	if [ ${#pkgs[@]} -gt 0 ]; then
		say "installing ${pkgs[*]} from Debian"
		# Postfix as a package only: no system MTA is configured or started.
		echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
		apt-get update -qq >&2
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >&2
	fi
	if ! pkg-config --exists libevent libevent_openssl libevent_pthreads openssl libunbound 2>/dev/null; then
		say "petrel's build dependencies are missing: make install-deps"
		make -C "$ROOT" install-deps >&2
	fi
}

# ----------------------------------------------------------------------------- process groups
PGIDS=()     # every group we started and have not stopped yet
LAST_PID=

# start_group LOGFILE CMD...: CMD in a new session/process group; its pid (= pgid) in LAST_PID.
start_group() {
	local log=$1
	shift
	setsid "$@" </dev/null >>"$log" 2>&1 &
	LAST_PID=$!
	PGIDS+=("$LAST_PID")
	local _
	for _ in $(seq 50); do
		[ "$(awk '{sub(/.*\) /, ""); print $3}' /proc/"$LAST_PID"/stat 2>/dev/null)" = "$LAST_PID" ] && return 0
		kill -0 "$LAST_PID" 2>/dev/null || return 0   # already gone: the caller notices
		sleep 0.02
	done
	die "process $LAST_PID ($1) did not become a process group leader"
}

# run_group LOGFILE CMD...: CMD in its own group, waited for; a signal to this script
# interrupts the wait at once and the EXIT trap stops the group.  Returns CMD's status.
run_group() {
	local st=0
	start_group "$@"
	wait "$LAST_PID" || st=$?
	forget_group "$LAST_PID"
	return "$st"
}

forget_group() {
	local pg=$1 keep=() p
	for p in "${PGIDS[@]}"; do [ "$p" = "$pg" ] || keep+=("$p"); done
	PGIDS=(${keep[@]+"${keep[@]}"})
}

# stop_group PGID [GRACE_TENTHS]: SIGTERM to the group, SIGKILL after the grace period.
stop_group() {
	local pg=$1 grace=${2:-50}
	kill -TERM -- "-$pg" 2>/dev/null || true
	for _ in $(seq "$grace"); do
		kill -0 -- "-$pg" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 -- "-$pg" 2>/dev/null; then
		say "process group $pg ignored SIGTERM, sending SIGKILL"
		kill -KILL -- "-$pg" 2>/dev/null || true
		sleep 0.2
	fi
	wait "$pg" 2>/dev/null || true
	forget_group "$pg"
}

W=
cleanup() {
	local rc=$? pg
	trap - EXIT INT TERM
	for pg in ${PGIDS[@]+"${PGIDS[@]}"}; do stop_group "$pg" 30; done
	if [ -n "$W" ] && [ -d "$W" ]; then
		if [ "${BENCH_KEEP:-0}" = 1 ]; then say "work directory kept: $W"; else rm -rf "$W"; fi
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

LIB() { python3 "$HERE/benchlib.py" "$@"; }

# discard DIR...: out of the way of the next run, removed with $W at exit.  Not rm -rf: on an
# ext4 without a journal, inodes freed in the last minutes are skipped (one by one) by every
# file creation that follows, so deleting the last run's 20,000 files would slow whichever
# server runs next.
DISCARDED=0
discard() {
	local p
	mkdir -p "$W/discarded"
	for p in "$@"; do
		[ -e "$p" ] || continue
		DISCARDED=$((DISCARDED + 1))
		mv "$p" "$W/discarded/$DISCARDED"
	done
}

# ----------------------------------------------------------------------------- Postfix
# A private instance: own config, queue and data directories under $W/pf, chroot off, one
# smtpd listener on 127.0.0.1:$PF_PORT, Maildir delivery for bench.test by virtual(8), and
# Postfix's default fsync behaviour.  smtpd may run 1,200 processes (load C holds 1,000
# idle sessions, each an smtpd process); every other service has default_process_limit.
pf_setup() {
	local d=$W/pf
	discard "$d" "$W/pfmail"
	mkdir -p "$d/etc" "$d/q" "$d/data" "$W/pfmail"
	chown postfix "$d/data"
	chown "$VUID:$VGID" "$W/pfmail"
	cat >"$d/etc/master.cf" <<-EOF
		127.0.0.1:$PF_PORT inet n - n - 1200 smtpd
		pickup     unix  n - n 60    1 pickup
		cleanup    unix  n - n -     0 cleanup
		qmgr       unix  n - n 300   1 qmgr
		rewrite    unix  - - n -     - trivial-rewrite
		bounce     unix  - - n -     0 bounce
		defer      unix  - - n -     0 bounce
		trace      unix  - - n -     0 bounce
		verify     unix  - - n -     1 verify
		flush      unix  n - n 1000? 0 flush
		proxymap   unix  - - n -     - proxymap
		proxywrite unix  - - n -     1 proxymap
		smtp       unix  - - n -     - smtp
		relay      unix  - - n -     - smtp
		showq      unix  n - n -     - showq
		error      unix  - - n -     - error
		retry      unix  - - n -     - error
		discard    unix  - - n -     - discard
		local      unix  - n n -     - local
		virtual    unix  - n n -     - virtual
		anvil      unix  - - n -     1 anvil
		scache     unix  - - n -     1 scache
		postlog    unix-dgram n - n - 1 postlogd
	EOF
	cat >"$d/etc/main.cf" <<-EOF
		compatibility_level = 3.6
		config_directory = $d/etc
		queue_directory = $d/q
		data_directory = $d/data
		mail_owner = postfix
		setgid_group = postdrop
		myhostname = postfix.bench.local
		mydomain = bench.local
		myorigin = \$myhostname
		mydestination =
		inet_interfaces = 127.0.0.1
		inet_protocols = ipv4
		mynetworks = 127.0.0.0/8
		alias_maps =
		alias_database =
		biff = no
		smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
		virtual_mailbox_domains = bench.test
		virtual_mailbox_base = $W/pfmail
		virtual_mailbox_maps = texthash:$d/etc/vmailbox
		virtual_uid_maps = static:$VUID
		virtual_gid_maps = static:$VGID
		smtpd_peername_lookup = no
		in_flow_delay = 0
		default_process_limit = 200
		smtpd_client_connection_count_limit = 0
		smtpd_client_connection_rate_limit = 0
		maillog_file_prefixes = /tmp, $W
		maillog_file = $d/maillog
	EOF
	# Load E: foreign mail goes to the relay sink, by Postfix's smtp(8) with its defaults.
	[ -z "$RELAYHOST" ] || echo "relayhost = $RELAYHOST" >>"$d/etc/main.cf"
	# A trailing slash in the map value means Maildir.
	echo "user@bench.test bench.test/user/" >"$d/etc/vmailbox"
	postfix -c "$d/etc" check >>"$d/setup.log" 2>&1 || { cat "$d/setup.log" "$d/maillog" >&2 2>/dev/null; die "postfix check failed"; }
	# Postfix waits while main.cf is less than a second old.
	touch -d '-2 seconds' "$d/etc/main.cf" "$d/etc/master.cf"
}

pf_start() {
	start_group "$W/pf/master.out" "$PF_MASTER" -c "$W/pf/etc"
	SRV_PG=$LAST_PID
	LIB wait-ready 127.0.0.1 "$PF_PORT" 30 || { cat "$W/pf/master.out" "$W/pf/maillog" >&2; die "Postfix did not start"; }
}

# ----------------------------------------------------------------------------- petrel
pt_setup() {
	local d=$W/pt
	discard "$d"
	mkdir -p "$d/spool" "$d/mail"
	cat >"$d/petrel.conf" <<-EOF
		hostname = petrel.bench.local
		listen_smtp = 127.0.0.1:$PT_PORT
		local_domains = bench.test
		mail_root = $d/mail
		spool_dir = $d/spool
		max_connections = $((N_D + 1000))
		max_connections_per_ip = 100000
	EOF
	# Load E: foreign mail from 127.0.0.1 is relayed, to the relay sink.
	if [ -n "$RELAYHOST" ]; then
		printf 'relay_networks = 127.0.0.0/8\nrelayhost = %s\n' "$RELAYHOST" >>"$d/petrel.conf"
	fi
	"$PETREL" check-config -c "$d/petrel.conf" >&2 || die "petrel check-config failed"
}

pt_start() {
	start_group "$W/pt/petrel.log" "$PETREL" serve -c "$W/pt/petrel.conf"
	SRV_PG=$LAST_PID
	LIB wait-ready 127.0.0.1 "$PT_PORT" 30 || { tail -20 "$W/pt/petrel.log" >&2; die "petrel did not start"; }
}

# ----------------------------------------------------------------------------- smtp-sink
sk_setup() { rm -rf "$W/sk"; mkdir -p "$W/sk"; }
sk_start() {
	start_group "$W/sk/sink.log" smtp-sink -u nobody -h sink.bench.local 127.0.0.1:"$SINK_PORT" 1024
	SRV_PG=$LAST_PID
	LIB wait-ready 127.0.0.1 "$SINK_PORT" 30 || { cat "$W/sk/sink.log" >&2; die "smtp-sink did not start"; }
}

# ----------------------------------------------------------------------------- relay sink (load E)
# The "remote" mail server of load E: smtp-sink on a second loopback host.  It throws every
# message away; -c makes it print its counters (`sess=N quit=N mesg=N`, CR-terminated) on
# stdout at every "." and session end — one short write() to a file of the work directory,
# nothing else touches the disk.  The servers reach it through `relayhost`.
RELAY_ADDR=127.0.0.3
RELAY_RCPT=user@remote.test
RELAY_SENT_RE='to=<user@remote\.test>, relay=127\.0\.0\.3\[127\.0\.0\.3\]:[0-9]+, .*status=sent'
RELAYHOST=   # "[127.0.0.3]:PORT" while load E runs (pf_setup/pt_setup add it); empty otherwise
RSINK_PG=

rsink_start() {
	start_group "$1" smtp-sink -c -u nobody -h sink.remote.test "$RELAY_ADDR:$SINK_PORT" 1024
	RSINK_PG=$LAST_PID
	LIB wait-ready "$RELAY_ADDR" "$SINK_PORT" 30 || { cat "$1" >&2; die "the relay smtp-sink did not start"; }
}

# relay_queued SERVER: messages the server still holds in its queue (0 = drained).  Postfix:
# a file each; petrel: the message file ID (its retry state ID.st and the spare files .spare.N
# kept for reuse are not counted).
relay_queued() {
	case $1 in
	postfix) find "$W/pf/q/incoming" "$W/pf/q/active" "$W/pf/q/deferred" "$W/pf/q/hold" \
		"$W/pf/q/maildrop" -type f 2>/dev/null | wc -l ;;
	petrel) find "$W/pt/spool/queue" "$W/pt/spool/incoming" -type f ! -name '*.st' ! -name '.*' \
		! -name '*.st.new' 2>/dev/null | wc -l ;;
	esac
}

# relay_sent: recipients the server has logged as sent to the relay sink.
relay_sent() {
	local c
	c=$(grep -cE "$RELAY_SENT_RE" "$SRV_LOG" 2>/dev/null || true)
	echo "${c:-0}"
}

# relay_settle SERVER N: wait (at most 30 s) until the log says N sent and the queue is empty:
# the sink counts a message at its ".", the server logs and removes it after the 250.
relay_settle() {
	local _
	for _ in $(seq 150); do
		[ "$(relay_sent)" -ge "$2" ] && [ "$(relay_queued "$1")" = 0 ] && return 0
		sleep 0.2
	done
}

# relay_note SERVER N SINK-OUT: what went wrong with the relaying, once the server stopped.
relay_note() {
	local srv=$1 n=$2 sent bad first left got out=
	sent=$(relay_sent)
	[ "$sent" = "$n" ] || out="$srv logged $sent of $n messages as sent to the relay"
	bad=$(grep -cE 'status=(deferred|bounced)' "$SRV_LOG" 2>/dev/null || true)
	if [ "${bad:-0}" -gt 0 ]; then
		first=$(grep -m1 -E 'status=(deferred|bounced)' "$SRV_LOG" | sed -E 's/^.*status=//' | cut -c1-90)
		out="${out:+$out; }$bad deferred/bounced lines in the $srv log, first: $first"
	fi
	left=$(relay_queued "$srv")
	[ "$left" = 0 ] || out="${out:+$out; }queue NOT drained: $left messages left in the $srv queue"
	got=$(LIB sink-count "$3")
	[ "$got" = "$n" ] || out="${out:+$out; }smtp-sink received $got messages in all (expected $n)"
	echo "$out"
}

# server_env SERVER: port, Maildir of bench.test, log file.
server_env() {
	case $1 in
	postfix) PORT=$PF_PORT MAILDOM=$W/pfmail/bench.test SRV_LOG=$W/pf/maillog ;;
	petrel) PORT=$PT_PORT MAILDOM=$W/pt/mail/bench.test SRV_LOG=$W/pt/petrel.log ;;
	smtp-sink) PORT=$SINK_PORT MAILDOM='' SRV_LOG=$W/sk/sink.log ;;
	esac
}

server_up() {
	case $1 in
	postfix) pf_setup && pf_start ;;
	petrel) pt_setup && pt_start ;;
	smtp-sink) sk_setup && sk_start ;;
	esac
}

# What went wrong on the server side, as one short note (empty when nothing did).
# server_note SERVER [N]: N = messages the server should have logged as queued.
server_note() {
	local srv=$1 n=${2:-} pat lines first acc out=
	if ! kill -0 "$SRV_PG" 2>/dev/null || [ "$(awk '{sub(/.*\) /, ""); print $1}' /proc/"$SRV_PG"/stat 2>/dev/null)" = Z ]; then
		out="SERVER EXITED before the end of the load"
	fi
	case $srv in
	postfix) pat='postfix/[a-z/-]+\[[0-9]+\]: (warning|error|fatal|panic):' ;;
	petrel) pat='petrel\[[0-9]+\]: (warning|error|fatal|crit[a-z]*):' ;;
	*) echo "$out"; return 0 ;;
	esac
	# Postfix's "file system clock is N seconds ahead of local clock" is benign here (ext4
	# timestamps are taken from the coarse kernel clock) and not counted.  Neither is qmgr's
	# congestion advice (qmgr_clog_warn_time: "mail for X is using up N of N active queue
	# entries" and the hints that follow it): every load has one destination (virtual(8) for
	# bench.test, the relayhost in load E), and it says that mail arrives faster than Postfix
	# delivers it, which dlv shows; it gets a short note instead.
	local benign='file system clock is|postfix/qmgr\[[0-9]+\]: warning: (mail for .* is using up [0-9]+ of [0-9]+ active queue entries|lots of deferred mail, that is bad|please avoid flushing the whole queue|so that Postfix (quickly skips|wastes less)|you may need to (reduce [a-z]+ connect|increase the)|to turn off these warnings)'
	lines=$(grep -E "$pat" "$SRV_LOG" 2>/dev/null | grep -Evc "$benign" || true)
	if [ "${lines:-0}" -gt 0 ]; then
		first=$(grep -E "$pat" "$SRV_LOG" | grep -Ev "$benign" | head -1 | sed -E 's/^.*(warning|error|fatal|panic|crit[a-z]*): //' | cut -c1-90)
		out="${out:+$out; }$lines warning/error lines in the $srv log, first: $first"
	fi
	if grep -qE 'postfix/qmgr\[[0-9]+\]: warning: mail for .* is using up' "$SRV_LOG" 2>/dev/null; then
		out="${out:+$out; }qmgr: active queue full (congestion advice, not counted)"
	fi
	# Postfix's qmgr logs "(queue active)"; petrel too, or "(delivering at once)" for a message
	# it delivered into the Maildirs straight from the journal, without queueing it.
	if [ -n "$n" ]; then
		acc=$(grep -cE 'nrcpt=[0-9]+ \((queue active|delivering at once)\)' "$SRV_LOG" 2>/dev/null || true)
		[ "${acc:-0}" = "$n" ] || out="${out:+$out; }$srv logged ${acc:-0} of $n messages as queued"
	fi
	echo "$out"
}

# ----------------------------------------------------------------------------- loads
RES=       # results file (JSON lines)

# hold_start SERVER N: N idle sessions from 127.0.0.2 (greeting + EHLO), held until stopped.
hold_start() {
	local n=$2 r=$W/r
	rm -f "$r/hold.ready" "$r/hold.status"
	start_group "$r/hold.log" python3 "$HERE/benchlib.py" hold 127.0.0.1 "$PORT" "$n" 127.0.0.2 \
		"$r/hold.ready" "$r/hold.status" 1800
	HOLD_PG=$LAST_PID
	local _
	for _ in $(seq 3000); do
		[ -f "$r/hold.ready" ] && return 0
		kill -0 "$HOLD_PG" 2>/dev/null || break
		sleep 0.1
	done
	cat "$r/hold.log" >&2
	die "the idle-session holder did not get ready"
}

hold_stop() {
	stop_group "$HOLD_PG" 100
}

# msg_load LOAD SERVER RUN N IDLE SMTP-SOURCE-ARGS...
# With RELAYHOST set (load E) the messages go to $RELAY_RCPT, the server relays them to the
# relay sink, and "delivered" means received by that sink.
msg_load() {
	local load=$1 srv=$2 run=$3 n=$4 idle=$5 r=$W/r rcpt=user@bench.test
	shift 5
	server_env "$srv"
	rm -rf "$r"
	mkdir -p "$r"
	if [ -n "$RELAYHOST" ]; then
		rcpt=$RELAY_RCPT
		MAILDOM=
		rsink_start "$r/rsink.out"
	fi
	server_up "$srv"
	start_group "$r/sample.log" python3 "$HERE/benchlib.py" sample "$SRV_PG" "$r/sample.json"
	local samp=$LAST_PID note=
	if [ "$idle" -gt 0 ]; then
		hold_start "$srv" "$idle"
		local ok
		ok=$(LIB get "$r/hold.ready" ok)
		[ "$ok" = "$idle" ] || note="only $ok of $idle idle sessions opened ($(LIB get "$r/hold.ready" errors))"
	fi
	LIB stat "$SRV_PG" >"$r/before.json"
	local tmo=$((n / 50 > 120 ? n / 50 : 120))
	# --foreground: smtp-source stays in the group that run_group stops.
	run_group "$r/source.out" python3 "$HERE/benchlib.py" run "$r/run.json" -- \
		timeout --foreground -k 5 "$tmo" smtp-source "$@" -m "$n" -M client.bench.test \
		-f sender@client.bench.test -t "$rcpt" 127.0.0.1:"$PORT" || true
	if [ -n "$RELAYHOST" ]; then
		run_group "$r/count.json" python3 "$HERE/benchlib.py" wait-sink "$r/rsink.out" "$n" \
			"$r/run.json" "$DLV_TIMEOUT" || true
		relay_settle "$srv" "$n"
	elif [ -n "$MAILDOM" ]; then
		run_group "$r/count.json" python3 "$HERE/benchlib.py" wait-count "$MAILDOM" "$n" \
			"$r/run.json" "$DLV_TIMEOUT" || true
	fi
	LIB stat "$SRV_PG" >"$r/after.json"
	stop_group "$samp"
	if [ "$idle" -gt 0 ]; then
		hold_stop
		local closed
		closed=$(LIB get "$r/hold.status" closed_by_server)
		[ "${closed:-0}" = 0 ] || note="${note:+$note; }$closed of $idle idle sessions closed by the server during the load"
	fi
	local sn src_err
	sn=$(server_note "$srv" "$n")
	src_err=$(grep -m1 -vE '^\s*$' "$r/source.out" | cut -c1-100 || true)
	[ -z "$src_err" ] || note="${note:+$note; }smtp-source said: $src_err"
	[ -z "$sn" ] || note="${note:+$note; }$sn"
	stop_group "$SRV_PG" 100
	if [ -n "$RELAYHOST" ]; then
		# After the server stopped, so that a late duplicate shows up in the sink's count.
		local rn
		rn=$(relay_note "$srv" "$n" "$r/rsink.out")
		[ -z "$rn" ] || note="${note:+$note; }$rn"
		stop_group "$RSINK_PG" 30
	fi
	if [ -n "$MAILDOM" ]; then
		local final
		final=$(find "$MAILDOM" -path '*/new/*' -type f | wc -l)
		[ "$final" = "$n" ] || note="${note:+$note; }$final files in Maildir new/ after the server stopped (expected $n)"
	fi
	[ -z "$note" ] || note="run $run: $note"
	LIB result "$RES" "$load" "$srv" "$run" "$n" "$r/run.json" "$r/count.json" \
		"$r/before.json" "$r/after.json" "$r/sample.json" "$note"
	say "  $load $srv run $run: $(python3 -c 'import json,sys; d=json.loads(open(sys.argv[1]).readlines()[-1]); print("acc %s/s dlv %s/s cpu %ss" % tuple("%.0f" % d[k] if d[k] is not None else "-" for k in ("acc_rate","dlv_rate","cpu")))' "$RES")${note:+ ($note)}"
	if [ "${BENCH_KEEP:-0}" = 1 ]; then
		cp -a "$r" "$W/keep-$load-$srv-$run"
		cp "$SRV_LOG" "$W/keep-$load-$srv-$run/" 2>/dev/null || true
		[ "$srv" != postfix ] || cp "$W/pf/etc/main.cf" "$W/keep-$load-$srv-$run/" 2>/dev/null || true
		[ "$srv" != petrel ] || cp "$W/pt/petrel.conf" "$W/keep-$load-$srv-$run/" 2>/dev/null || true
	fi
}

# idle_load SERVER RUN N: load D.
idle_load() {
	local srv=$1 run=$2 n=$3 r=$W/r
	server_env "$srv"
	rm -rf "$r"
	mkdir -p "$r"
	server_up "$srv"
	start_group "$r/sample.log" python3 "$HERE/benchlib.py" sample "$SRV_PG" "$r/sample.json"
	local samp=$LAST_PID
	sleep 1
	LIB stat "$SRV_PG" >"$r/before.json"
	hold_start "$srv" "$n"
	sleep 2
	LIB stat "$SRV_PG" >"$r/after.json"
	LIB probe 127.0.0.1 "$PORT" 5 >"$r/probe.json"
	stop_group "$samp"
	hold_stop
	local sn
	sn=$(server_note "$srv")
	stop_group "$SRV_PG" 100
	LIB d-result "$RES" "$srv" "$run" "$n" "$r/before.json" "$r/after.json" "$r/hold.ready" \
		"$r/probe.json" "$r/sample.json" "$N_D_FULL"
	[ -z "$sn" ] || LIB record "$W/notes.jsonl" load=D server="$srv" "note=run $run: $sn"
	if [ "${BENCH_KEEP:-0}" = 1 ]; then
		cp -a "$r" "$W/keep-D-$srv-$run"
		cp "$SRV_LOG" "$W/keep-D-$srv-$run/" 2>/dev/null || true
	fi
	say "  D $srv run $run: $(cat "$r/hold.ready") probe $(cat "$r/probe.json")${sn:+ ($sn)}"
}

# load_E RUN: relay.  Each server gets `relayhost = [127.0.0.3]:$SINK_PORT`; smtp-source sends
# N_A messages for user@remote.test as in load A; the relay sink (rsink_start) counts what
# arrives.  dlv = N / time from the client's start until the sink has received all N.
load_E() {
	local run=$1 srv
	RELAYHOST="[$RELAY_ADDR]:$SINK_PORT"
	for srv in postfix petrel; do
		msg_load E "$srv" "$run" "$N_A" 0 -s 20 -l 1024
	done
	RELAYHOST=
}

# ----------------------------------------------------------------------------- main
need_root
install_deps
say "building petrel"
make -C "$ROOT" -j2 >&2 || die "build failed"
[ -x "$PETREL" ] || die "no $PETREL after make"

# Sessions need descriptors: 10,000 held sessions need as many in the server and the client.
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt 65536 ]; then ulimit -Hn 65536 2>/dev/null || true; fi
hard=$(ulimit -Hn)
soft=65536
[ "$hard" = unlimited ] || [ "$hard" -ge "$soft" ] || soft=$hard
ulimit -Sn "$soft"
NOFILE=$(ulimit -n)
if [ "$N_D" -gt $((NOFILE - 500)) ]; then
	say "open-files limit is $NOFILE: load D holds $((NOFILE - 500)) sessions instead of $N_D"
	N_D=$((NOFILE - 500))
fi

VUID=$(id -u nobody)
VGID=$(id -g nobody)
# The sink port is also load E's relay sink on $RELAY_ADDR: free on both addresses.
read -r PF_PORT PT_PORT SINK_PORT < <(LIB free-ports 3 10025 127.0.0.1 "$RELAY_ADDR")
[ -n "${SINK_PORT:-}" ] || die "no free ports on 127.0.0.1 and $RELAY_ADDR"

W=$(mktemp -d /tmp/pbXXXXXX)   # short: Postfix's unix sockets live below it (108-byte limit)
chmod 755 "$W"
RES=$W/results.jsonl
# Every run uses this copy: others may rebuild build/ while the benchmark runs.
cp "$PETREL" "$W/petrel"
PETREL=$W/petrel
: >"$RES"

PF_VERSION=$(postconf -d -h mail_version 2>/dev/null || echo '?')
PT_VERSION=$("$PETREL" version 2>/dev/null | head -1 || echo '?')
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')
DIRTY=
[ -z "$(git -C "$ROOT" status --porcelain -- src 2>/dev/null || true)" ] || DIRTY=+changes
say "work dir $W; ports: Postfix $PF_PORT, petrel $PT_PORT, smtp-sink $SINK_PORT; runs: $RUNS; open files: $NOFILE"

# The disk's own ceiling, no SMTP at all: durable Maildir-style files per second (diskprobe.c),
# median of 3, with 1, 8 and 20 threads.
disk_probe() {
	local t r rates out=
	cc -O2 -pthread -o "$W/diskprobe" "$HERE/diskprobe.c" || die "cannot build diskprobe"
	for t in 1 8 20; do
		rates=()
		for r in 1 2 3; do
			rates+=("$("$W/diskprobe" "$W/probe-$t-$r" "$t" 4000)")
			discard "$W/probe-$t-$r"
		done
		out="$out${out:+, }$t thread$([ "$t" = 1 ] || echo s) $(printf '%s\n' "${rates[@]}" | sort -n | sed -n 2p)/s"
	done
	echo "$out"
}
say "measuring the disk (diskprobe)"
DISK=$(disk_probe)
say "disk: $DISK"

T_START=$(date +%s)
for load in $LOADS; do
	case $load in
	A | Ad | B | C)
		servers="postfix petrel"
		case " $SINK_LOADS " in *" $load "*) servers="$servers smtp-sink" ;; esac
		for run in $(seq "$RUNS"); do
			for srv in $servers; do
				case $load in
				A) msg_load A "$srv" "$run" "$N_A" 0 -s 20 -l 1024 ;;
				Ad) msg_load Ad "$srv" "$run" "$N_A" 0 -s 20 -l 1024 -d ;;
				B) msg_load B "$srv" "$run" "$N_B" 0 -s 100 -l 65536 ;;
				C) msg_load C "$srv" "$run" "$N_A" "$N_IDLE_C" -s 20 -l 1024 ;;
				esac
			done
		done
		;;
	D)
		for run in $(seq "$RUNS"); do
			idle_load postfix "$run" "$N_D_PF"
			idle_load petrel "$run" "$N_D"
		done
		;;
	E) for run in $(seq "$RUNS"); do load_E "$run"; done ;;
	*) die "unknown load $load (A Ad B C D E)" ;;
	esac
done
[ -f "$W/notes.jsonl" ] && cat "$W/notes.jsonl" >>"$RES"
T_END=$(date +%s)

{
	echo "petrel ($PT_VERSION, $REV$DIRTY) vs Postfix $PF_VERSION — $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(($(grep MemTotal /proc/meminfo | awk '{print $2}') / 1048576)) GiB"
	echo "median of $RUNS run(s)$([ "$QUICK" = 1 ] && echo ', QUICK mode (fewer messages)'); A/A-d/C/E: $N_A msgs, B: $N_B msgs, C: +$N_IDLE_C idle sessions, D: petrel $N_D / Postfix $N_D_PF idle sessions; wall time $((T_END - T_START)) s"
	echo
	echo "disk ceiling (diskprobe: create, write 1,400 octets, fdatasync, rename, fsync of the directory; no SMTP): $DISK"
	echo
	LIB table "$RES"
	echo
	echo "acc = messages / smtp-source wall time; dlv = messages / time until all are in Maildir new/ (E: until the relay smtp-sink"
	echo "has received all), from the client's start;"
	echo "x = petrel / Postfix (smtp-sink: sink / Postfix); CPU = utime+stime of the server's process tree; peak RSS: one process = VmHWM,"
	echo "Postfix = sampled peak of the sum over its processes (shared pages counted per process); PSS = sampled peak of the summed Pss."
} >"$W/table.txt"
cat "$W/table.txt"
if [ -n "${BENCH_OUT:-}" ]; then
	mkdir -p "$BENCH_OUT"
	cp "$W/table.txt" "$RES" "$BENCH_OUT/"
	say "table and raw results copied to $BENCH_OUT"
fi
