#!/usr/bin/env bash
# A real single-node Apache Kafka broker (KRaft, broker+controller in one JVM) for tests and local use,
# or a 3-node cluster of such JVMs; assembled from Maven Central; no Docker, no tarball. See README.md.
#
#   kafka.sh fetch              collect the broker's jars into the cache (idempotent)
#   kafka.sh start DIR          start (or restart) the broker whose state lives in DIR; prints host:port
#   kafka.sh stop DIR [--kill]  stop it by the PID in DIR/pid (SIGTERM, then SIGKILL after a grace period)
#   kafka.sh status DIR         exit 0 and print "running PID BOOTSTRAP" if up, else exit 3
#   kafka.sh cluster start DIR          start whichever of the 3 nodes DIR/node1..3 is not running (the
#                                       first time: configure and format all 3); prints the bootstrap list
#   kafka.sh cluster stop DIR [--kill]  stop all 3 (one node: kafka.sh stop DIR/nodeN [--kill])
#   kafka.sh cluster status DIR         one line per node as `status` prints it; exit 0 if all 3 are up
#
# Settings (environment):
#   KAFKA_VERSION          broker version (org.apache.kafka:kafka_2.13), default 3.9.1
#   LLMGW_KAFKA_CACHE      cache root, default deploy/kafka/.cache; jars go to <root>/<version>/libs
#   LLMGW_KAFKA_OWNER_PID  optional: stop the broker when this process exits (test runners set it)
set -euo pipefail

KAFKA_VERSION="${KAFKA_VERSION:-3.9.1}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_ROOT="${LLMGW_KAFKA_CACHE:-$HERE/.cache}"
LIBS="$CACHE_ROOT/$KAFKA_VERSION/libs"
PROBE_CLASSES="$CACHE_ROOT/$KAFKA_VERSION/probe"
FETCHED_MARKER="$CACHE_ROOT/$KAFKA_VERSION/fetched"
DEPENDENCY_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.10.0"
JAVA_OPTS=(-Xmx512m -XX:+UseG1GC -Djava.awt.headless=true)
READY_TIMEOUT_S=60
STOP_GRACE_S=20
declare -A LOG_LINES_BEFORE_START=()  # per DIR: broker.log is appended across restarts; errors shown from here
CLUSTER_NODES=3

log() { echo "kafka.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- fetch

fetch() {
  if [[ -f "$FETCHED_MARKER" ]]; then
    return 0
  fi
  mkdir -p "$CACHE_ROOT/$KAFKA_VERSION"
  exec 9>"$CACHE_ROOT/$KAFKA_VERSION/.lock"
  flock 9  # several test runs may start at once; one fetches, the others wait and reuse
  if [[ ! -f "$FETCHED_MARKER" ]]; then
    copy_dependencies
    compile_probe
    date -u +%FT%TZ >"$FETCHED_MARKER"
  fi
  exec 9>&-
}

copy_dependencies() {
  command -v mvn >/dev/null || die "mvn not found (needs Maven 3.6+ and a JDK 17)"
  log "fetching Kafka $KAFKA_VERSION jars from Maven Central into $LIBS"
  local staging mvn_log
  staging="$(mktemp -d "$LIBS.partial.XXXXXX")"
  mvn_log="$CACHE_ROOT/$KAFKA_VERSION/maven.log"
  mvn -B -Dstyle.color=never -f "$HERE/pom.xml" \
    -Dkafka.version="$KAFKA_VERSION" \
    "$DEPENDENCY_PLUGIN:copy-dependencies" \
    -DoutputDirectory="$staging" -DincludeScope=runtime >"$mvn_log" 2>&1 \
    || { rm -rf "$staging"; maven_failed "$mvn_log"; }
  rm -rf "$LIBS"
  mv "$staging" "$LIBS"
  log "fetched $(find "$LIBS" -name '*.jar' | wc -l) jars"
}

maven_failed() {
  local mvn_log="$1"
  sed 's/\x1b\[[0-9;]*m//g' "$mvn_log" | tail -n 30 >&2  # without Maven's colour codes
  die "maven could not resolve kafka_2.13:$KAFKA_VERSION (log: $mvn_log)"
}

# The readiness probe (ReadyProbe.java) is compiled once per version, against that version's client jar.
compile_probe() {
  rm -rf "$PROBE_CLASSES"
  mkdir -p "$PROBE_CLASSES"
  javac -nowarn -cp "$LIBS/*" -d "$PROBE_CLASSES" "$HERE/ReadyProbe.java" >&2 \
    || die "could not compile ReadyProbe.java (needs a JDK, not only a JRE)"
}

# ---------------------------------------------------------------- configuration (first start only)

# COUNT (default 2) free loopback ports below the ephemeral range, so a restart on the same ports is
# unlikely to find one taken by some client's outgoing connection in the meantime.
pick_ports() {
  python3 - "${1:-2}" <<'PY'
import random, socket, sys
want = int(sys.argv[1])
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
held, ports = [], []
candidates = random.sample(range(10000, max(low, 10002)), k=min(200, max(low, 10002) - 10000))
for port in candidates + [0] * want:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        continue
    held.append(s)
    ports.append(s.getsockname()[1])
    if len(ports) == want:
        break
print(*ports)
PY
}

new_cluster_id() {
  # 16 random bytes, url-safe base64 without padding (what `kafka-storage random-uuid` prints);
  # drawn again when it starts with "-", which StorageTool would read as an option
  local id
  while :; do
    id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    [[ $id == -* ]] || break
  done
  printf '%s' "$id"
}

# NODE_ID and VOTERS default to a single node; a cluster node gets its id, every voter and REPLICAS=3
# (internal topics replicated 3 times, and min.insync.replicas=2 for every topic that does not set it).
write_server_properties() {
  local dir="$1" port="$2" cport="$3" node_id="${4:-1}" voters="${5:-1@127.0.0.1:$3}" replicas="${6:-1}"
  local min_isr=$((replicas < 2 ? 1 : 2))
  cat >"$dir/server.properties" <<EOF
# written by deploy/kafka/kafka.sh; reused on restart (same ports, same data)
process.roles=broker,controller
node.id=$node_id
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=$replicas
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=$replicas
transaction.state.log.min.isr=$min_isr
default.replication.factor=$replicas
min.insync.replicas=$min_isr
transaction.state.log.num.partitions=4
group.initial.rebalance.delay.ms=0
log.cleaner.dedupe.buffer.size=4194304
# After a SIGKILL the restarted controller holds the dead incarnation's registration until its session
# expires (default 9 s, 16 s to ready measured); shorter sessions make kill/restart tests faster.
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=4000
EOF
}

write_log4j_properties() {
  local dir="$1"
  cat >"$dir/log4j.properties" <<EOF
# written by deploy/kafka/kafka.sh: everything to $dir/broker.log, nothing to stdout
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File=$dir/broker.log
log4j.appender.file.MaxFileSize=20MB
log4j.appender.file.MaxBackupIndex=2
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.org.apache.kafka.clients=WARN
EOF
}

format_storage() {
  local dir="$1" cluster_id="${2:-$(new_cluster_id)}"
  java -cp "$LIBS/*" -Dlog4j.configuration="file:$dir/log4j.properties" \
    kafka.tools.StorageTool format -t "$cluster_id" -c "$dir/server.properties" \
    >>"$dir/format.log" 2>&1 || { tail -n 20 "$dir/format.log" >&2; die "storage format failed"; }
}

# Writes config and formats storage the first time; a DIR that has both is reused as it is.
prepare_dir() {
  local dir="$1"
  if [[ -f "$dir/server.properties" && -f "$dir/data/meta.properties" ]]; then
    return 0
  fi
  local ports
  read -r -a ports <<<"$(pick_ports)"
  [[ ${#ports[@]} -eq 2 ]] || die "could not find two free loopback ports"
  mkdir -p "$dir/data"
  write_server_properties "$dir" "${ports[0]}" "${ports[1]}"
  write_log4j_properties "$dir"
  echo "127.0.0.1:${ports[0]}" >"$dir/bootstrap"
  format_storage "$dir"
}

# ---------------------------------------------------------------- process

# Alive and not a zombie (a broker that died under this very script stays a zombie until it exits).
alive() {
  local pid="$1" state
  state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" || return 1
  [[ -n "$state" && "$state" != "Z" ]]
}

# The PID in DIR/pid, if that process is alive and is this DIR's broker (guards against PID reuse).
running_pid() {
  local dir="$1" pid
  [[ -f "$dir/pid" ]] || return 1
  pid="$(<"$dir/pid")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$dir/server.properties" || return 1
  echo "$pid"
}

# Bindable the way the broker binds (SO_REUSEADDR, like Java's server sockets): connections of the
# previous incarnation left in TIME_WAIT do not count, another listener does.
port_bindable() {
  python3 - "$1" 2>/dev/null <<'PY'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
PY
}

# On a restart the ports are fixed by server.properties; if another process took one meanwhile, the
# readiness probe could even talk to the wrong server. Say so instead. Only this node's own listeners
# count (a cluster node's file also names the other nodes' controller ports).
check_ports_free() {
  local dir="$1" port
  while read -r port; do
    port_bindable "$port" || die "port $port (from $dir/server.properties) is in use by another process"
  done < <(grep -E '^listeners=' "$dir/server.properties" | grep -oE '127\.0\.0\.1:[0-9]+' | cut -d: -f2 | sort -u)
}

launch_java() {
  local dir="$1"
  if [[ -f "$dir/broker.log" ]]; then
    LOG_LINES_BEFORE_START[$dir]="$(wc -l <"$dir/broker.log")"
  fi
  # setsid: the broker does not get the terminal's Ctrl-C; it is stopped by PID only.
  setsid java "${JAVA_OPTS[@]}" \
    -Dlog4j.configuration="file:$dir/log4j.properties" \
    -cp "$LIBS/*" kafka.Kafka "$dir/server.properties" \
    </dev/null >>"$dir/stdout.log" 2>&1 &
  echo $! >"$dir/pid"
}

# Optional watchdog: when the owner (e.g. a pytest run killed with -9) dies, stop the broker too.
launch_owner_watchdog() {
  local dir="$1" owner="${LLMGW_KAFKA_OWNER_PID:-}" pid
  [[ -n "$owner" ]] || return 0
  pid="$(<"$dir/pid")"
  # shellcheck disable=SC2016  # $1/$2 are expanded by the inner bash
  setsid bash -c '
    while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 2; done
    kill -0 "$2" 2>/dev/null && kill -TERM "$2"
  ' watchdog "$owner" "$pid" </dev/null >/dev/null 2>&1 &
}

# One real client round trip through the admin API (describe cluster, list topics).
client_call_succeeds() {
  local bootstrap="$1"
  timeout 20 java -XX:TieredStopAtLevel=1 -Xshare:auto -cp "$PROBE_CLASSES:$LIBS/*" \
    -Dlog4j.configuration="file:/dev/null" ReadyProbe "$bootstrap" >/dev/null 2>&1
}

port_open() {
  local bootstrap="$1"
  (exec 3<>"/dev/tcp/${bootstrap%:*}/${bootstrap##*:}") 2>/dev/null
}

wait_ready() {
  local dir="$1" bootstrap deadline
  bootstrap="$(<"$dir/bootstrap")"
  deadline=$((SECONDS + READY_TIMEOUT_S))
  while ((SECONDS < deadline)); do
    if ! running_pid "$dir" >/dev/null; then
      show_log_tail "$dir"
      rm -f "$dir/pid"
      die "broker exited during startup"
    fi
    if port_open "$bootstrap" && client_call_succeeds "$bootstrap"; then
      return 0
    fi
    sleep 0.3
  done
  show_log_tail "$dir"
  stop "$dir" --kill
  die "broker not ready after ${READY_TIMEOUT_S}s"
}

# The first errors (usually the cause: the exception line follows the ERROR line), then the last lines.
show_log_tail() {
  local dir="$1"
  if [[ -s "$dir/broker.log" ]]; then
    log "---- first errors in $dir/broker.log since this start"
    tail -n "+$((${LOG_LINES_BEFORE_START[$dir]:-0} + 1))" "$dir/broker.log" \
      | grep -m 4 -A 1 -E '\] (ERROR|FATAL) ' >&2 || true
    log "---- last lines of $dir/broker.log"
    tail -n 15 "$dir/broker.log" >&2
  fi
  if [[ -s "$dir/stdout.log" ]]; then
    log "---- last lines of $dir/stdout.log"
    tail -n 15 "$dir/stdout.log" >&2
  fi
}

# ---------------------------------------------------------------- a 3-node cluster

# Three JVMs, each broker and controller (KRaft combined mode), in DIR/node1..3, each a DIR like the
# single broker's: `start`/`stop`/`status` work on one node (kill -9 one, restart it). The controller
# quorum is the three of them, so with two nodes down there is no quorum: no leader moves, no ISR
# shrinks, and acks=all produces time out until a second node is back. docs/ledger.md has what the
# gateway does then.

node_dirs() {
  local dir="$1" n
  for ((n = 1; n <= CLUSTER_NODES; n++)); do echo "$dir/node$n"; done
}

# The first time: ports for all three, each node's config with the full voter list, one cluster id.
prepare_cluster() {
  local dir="$1" ports voters="" n cluster_id node
  local -a nodes
  mapfile -t nodes < <(node_dirs "$dir")
  if [[ -f "$dir/bootstrap" ]]; then
    for node in "${nodes[@]}"; do
      [[ -f "$node/server.properties" && -f "$node/data/meta.properties" ]] \
        || die "$dir/bootstrap exists but $node is not configured; remove $dir to start afresh"
    done
    return 0
  fi
  read -r -a ports <<<"$(pick_ports $((2 * CLUSTER_NODES)))"
  [[ ${#ports[@]} -eq $((2 * CLUSTER_NODES)) ]] || die "could not find $((2 * CLUSTER_NODES)) free loopback ports"
  for ((n = 1; n <= CLUSTER_NODES; n++)); do
    voters+="${voters:+,}$n@127.0.0.1:${ports[$((2 * n - 1))]}"
  done
  cluster_id="$(new_cluster_id)"
  local bootstrap=""
  for ((n = 1; n <= CLUSTER_NODES; n++)); do
    node="${nodes[$((n - 1))]}"
    rm -rf "$node"
    mkdir -p "$node/data"
    write_server_properties "$node" "${ports[$((2 * n - 2))]}" "${ports[$((2 * n - 1))]}" "$n" "$voters" \
      "$CLUSTER_NODES"
    write_log4j_properties "$node"
    echo "127.0.0.1:${ports[$((2 * n - 2))]}" >"$node/bootstrap"
    bootstrap+="${bootstrap:+,}127.0.0.1:${ports[$((2 * n - 2))]}"
    format_storage "$node" "$cluster_id"
  done
  echo "$bootstrap" >"$dir/bootstrap"
}

# How many brokers the node at BOOTSTRAP knows (0 if it does not answer).
brokers_seen() {
  local out
  out="$(timeout 20 java -XX:TieredStopAtLevel=1 -Xshare:auto -cp "$PROBE_CLASSES:$LIBS/*" \
    -Dlog4j.configuration="file:/dev/null" ReadyProbe "$1" 2>/dev/null)" || { echo 0; return; }
  [[ "$out" =~ ready:\ ([0-9]+)\ node ]] && echo "${BASH_REMATCH[1]}" || echo 0
}

cluster_start() {
  local dir="$1" node deadline
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  fetch
  prepare_cluster "$dir"
  # launch every stopped node before waiting on any: a lone node has no quorum and never gets ready
  while read -r node; do
    if ! running_pid "$node" >/dev/null; then
      check_ports_free "$node"
      launch_java "$node"
      launch_owner_watchdog "$node"
    fi
  done < <(node_dirs "$dir")
  while read -r node; do wait_ready "$node"; done < <(node_dirs "$dir")
  deadline=$((SECONDS + READY_TIMEOUT_S))
  while read -r node; do    # each node's metadata shows all three brokers registered
    until (($(brokers_seen "$(<"$node/bootstrap")") >= CLUSTER_NODES)); do
      ((SECONDS < deadline)) || { show_log_tail "$node"; die "$node does not see $CLUSTER_NODES brokers"; }
      sleep 0.3
    done
  done < <(node_dirs "$dir")
  cat "$dir/bootstrap"
}

cluster_stop() {
  local dir="$1" mode="${2:-}" node failed=0
  local -a pids=()
  [[ -z "$mode" || "$mode" == "--kill" ]] || usage
  [[ -d "$dir" ]] || return 0
  dir="$(cd "$dir" && pwd)"
  while read -r node; do     # all at once: each graceful stop would wait on the others' controllers
    stop "$node" "$mode" &
    pids+=($!)
  done < <(node_dirs "$dir")
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  return "$failed"
}

cluster_status() {
  local dir="$1" node down=0
  while read -r node; do
    echo "$(basename "$node") $(status_line "$node")"
    running_pid "$node" >/dev/null || down=1
  done < <(node_dirs "$dir")
  return $((down * 3))
}

status_line() {
  local dir="$1" pid
  if [[ -d "$dir" ]] && pid="$(running_pid "$(cd "$dir" && pwd)")"; then
    echo "running $pid $(<"$dir/bootstrap")"
  else
    echo "stopped"
  fi
}

cluster() {
  local sub="${1:-}"
  case "$sub" in
    start) [[ $# -eq 2 ]] || usage; cluster_start "$2" ;;
    stop) [[ $# -ge 2 && $# -le 3 ]] || usage; cluster_stop "$2" "${3:-}" ;;
    status) [[ $# -eq 2 ]] || usage; cluster_status "$2" ;;
    *) usage ;;
  esac
}

# ---------------------------------------------------------------- subcommands

start() {
  local dir="$1"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  fetch
  if ! running_pid "$dir" >/dev/null; then
    prepare_dir "$dir"
    check_ports_free "$dir"
    launch_java "$dir"
    launch_owner_watchdog "$dir"
  fi
  wait_ready "$dir"
  cat "$dir/bootstrap"
}

stop() {
  local dir="$1" mode="${2:-}" pid waited=0
  [[ -z "$mode" || "$mode" == "--kill" ]] || usage
  [[ -d "$dir" ]] || return 0
  dir="$(cd "$dir" && pwd)"
  if pid="$(running_pid "$dir")"; then
    if [[ "$mode" == "--kill" ]]; then
      kill -KILL "$pid"
    else
      kill -TERM "$pid"
    fi
    while alive "$pid" && ((waited < STOP_GRACE_S * 10)); do
      sleep 0.1
      waited=$((waited + 1))
    done
    if alive "$pid"; then
      log "broker $pid still running ${STOP_GRACE_S}s after SIGTERM; sending SIGKILL"
      kill -KILL "$pid"
      while alive "$pid"; do sleep 0.1; done
    fi
  fi
  rm -f "$dir/pid"
}

status() {
  local dir="$1" pid
  dir="$(cd "$dir" 2>/dev/null && pwd)" || { echo "stopped"; exit 3; }
  if pid="$(running_pid "$dir")"; then
    echo "running $pid $(<"$dir/bootstrap")"
  else
    echo "stopped"
    exit 3
  fi
}

usage() {
  sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

main() {
  local cmd="${1:-}"
  case "$cmd" in
    fetch) fetch ;;
    start) [[ $# -eq 2 ]] || usage; start "$2" ;;
    stop) [[ $# -ge 2 && $# -le 3 ]] || usage; stop "$2" "${3:-}" ;;
    status) [[ $# -eq 2 ]] || usage; status "$2" ;;
    cluster) shift; cluster "$@" ;;
    *) usage ;;
  esac
}

main "$@"
