#!/usr/bin/env bash
# The clustered engines, beside the single ones of `scripts/engines.sh start` (other ports, other
# data directories, so both run at once): 3 RabbitMQ nodes on this host forming one cluster and a
# 3-server ZooKeeper ensemble, all on loopback. Called through `scripts/engines.sh`:
#
#   scripts/engines.sh start-cluster        install if needed, start all 6, wait until the
#                                           RabbitMQ cluster has 3 running nodes and the ensemble
#                                           a leader and 2 followers; prints the URLs
#   scripts/engines.sh stop-cluster         stop them (data kept: start-cluster brings it back)
#   scripts/engines.sh status-cluster       one line per node; exit 1 if any is down
#   scripts/engines.sh urls-cluster         the two connect strings, as shell assignments
#   scripts/engines.sh kill-rabbitmq-node N     kill -9 RabbitMQ node N (1..3)
#   scripts/engines.sh start-rabbitmq-node N    start it again, wait until it has rejoined
#   scripts/engines.sh restart-rabbitmq-node N  stop_app, 2 s, start_app (a graceful restart)
#   scripts/engines.sh kill-zk-server N         kill -9 ZooKeeper server N (1..3)
#   scripts/engines.sh start-zk-server N        start it again, wait until it follows or leads
#   scripts/engines.sh restart-zk-server N      SIGTERM it, start it again
#
# RabbitMQ node N: rabbit-cN@localhost, AMQP on 127.0.0.1:570N, Erlang distribution on 2570N,
# data under $CLUSTER_DIR/rabbit-cN (nodes 2 and 3 joined to node 1; all share the Debian
# package's Erlang cookie, /var/lib/rabbitmq/.erlang.cookie, as they run as user rabbitmq).
# ZooKeeper server N: client port 219N, quorum 289N, election 389N on 127.0.0.1, tickTime 200 ms,
# data under $CLUSTER_DIR/zk-N (myid N).
set -euo pipefail

CLUSTER_DIR=${RIDESHARE_CLUSTER_DIR:-/tmp/rideshare-cluster}
ZK_BIN=/usr/share/zookeeper/bin
NODES=(1 2 3)
READY_S=${RIDESHARE_CLUSTER_READY_S:-90}

die() { echo "engines: $*" >&2; exit 1; }

node_name() { echo "rabbit-c$1@localhost"; }
amqp_port() { echo $((5700 + $1)); }
dist_port() { echo $((25700 + $1)); }
zk_port() { echo $((2190 + $1)); }
check_n() { case "${1:-}" in 1|2|3) ;; *) die "node number must be 1, 2 or 3 (got '${1:-}')" ;; esac; }

amqp_urls() {
  local urls=() n
  for n in "${NODES[@]}"; do urls+=("amqp://guest:guest@127.0.0.1:$(amqp_port "$n")"); done
  (IFS=,; echo "${urls[*]}")
}
zk_connect() {
  local servers=() n
  for n in "${NODES[@]}"; do servers+=("127.0.0.1:$(zk_port "$n")"); done
  (IFS=,; echo "${servers[*]}")
}

# --- RabbitMQ ---------------------------------------------------------------------------------

ctl() { local n=$1; shift; rabbitmqctl -q -n "$(node_name "$n")" "$@"; }
rabbit_node_up() { ctl "$1" status >/dev/null 2>&1; }
rabbit_dir() { echo "$CLUSTER_DIR/rabbit-c$1"; }
rabbit_pid() { cat "$(rabbit_dir "$1")/node.pid" 2>/dev/null || true; }
# The running nodes node N sees in its cluster, one per line.
running_nodes() {
  ctl "$1" eval 'rabbit_nodes:all_running().' 2>/dev/null | tr -d "[]' " | tr ',' '\n' | grep . || true
}
rabbit_clustered() { [ "$(running_nodes "$1" | grep -c '^rabbit-c')" -eq "${#NODES[@]}" ]; }

launch_rabbit_node() {
  local n=$1 dir
  dir=$(rabbit_dir "$n")
  mkdir -p "$dir/mnesia" "$dir/log"
  # No plugins: the packaged defaults could open ports (management, prometheus) the single node
  # already has.
  [ -f "$dir/enabled_plugins" ] || echo '[].' > "$dir/enabled_plugins"
  chown -R rabbitmq:rabbitmq "$dir"
  echo "engines: starting RabbitMQ $(node_name "$n") on 127.0.0.1:$(amqp_port "$n")"
  RABBITMQ_NODENAME=$(node_name "$n") \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT=$(amqp_port "$n") \
    RABBITMQ_DIST_PORT=$(dist_port "$n") \
    RABBITMQ_MNESIA_BASE="$dir/mnesia" \
    RABBITMQ_LOG_BASE="$dir/log" \
    RABBITMQ_PID_FILE="$dir/node.pid" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
    rabbitmq-server -detached >"$dir/start.out" 2>&1 || true
}

await_rabbit_node() {
  local n=$1
  for _ in $(seq 1 $((READY_S * 2))); do
    if rabbit_node_up "$n" && ctl "$n" await_startup >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  tail -n 20 "$(rabbit_dir "$n")"/log/*.log >&2 2>/dev/null || true
  die "RabbitMQ $(node_name "$n") did not start within ${READY_S} s (logs in $(rabbit_dir "$n")/log)"
}

# Node N (2 or 3) joins node 1's cluster, unless it is in it already.
join_rabbit_node() {
  local n=$1 first
  first=$(node_name 1)
  if running_nodes "$n" | grep -qx "$first"; then return 0; fi
  if ctl "$n" eval 'rabbit_nodes:all().' 2>/dev/null | grep -q "$first"; then
    return 0 # a member already; node 1 is coming back
  fi
  echo "engines: $(node_name "$n") joins $first"
  local out="$(rabbit_dir "$n")/join.out" step
  for step in stop_app reset "join_cluster $first" start_app await_startup; do
    # shellcheck disable=SC2086 # the step's words
    ctl "$n" $step >"$out" 2>&1 || { cat "$out" >&2; die "$step on $(node_name "$n") failed"; }
  done
}

await_rabbit_cluster() {
  for _ in $(seq 1 $((READY_S * 2))); do
    rabbit_clustered 1 && return 0
    sleep 0.5
  done
  die "the RabbitMQ cluster does not have ${#NODES[@]} running nodes after ${READY_S} s: $(running_nodes 1 | tr '\n' ' ')"
}

start_rabbit_cluster() {
  local n
  # All at once: nodes that were clustered wait for each other at boot.
  for n in "${NODES[@]}"; do rabbit_node_up "$n" || launch_rabbit_node "$n"; done
  for n in "${NODES[@]}"; do await_rabbit_node "$n"; done
  for n in "${NODES[@]:1}"; do join_rabbit_node "$n"; done
  await_rabbit_cluster
}

kill_rabbit_node() {
  local n=$1 pid
  pid=$(rabbit_pid "$n")
  [ -n "$pid" ] || die "no pid file for $(node_name "$n") (was it started by start-cluster?)"
  kill -0 "$pid" 2>/dev/null || die "$(node_name "$n") (pid $pid) is not running"
  echo "engines: kill -9 $(node_name "$n") (pid $pid)"
  kill -9 "$pid"
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  rm -f "$(rabbit_dir "$n")/node.pid"
}

start_rabbit_node() {
  local n=$1
  rabbit_node_up "$n" || launch_rabbit_node "$n"
  await_rabbit_node "$n"
  await_rabbit_cluster
  echo "engines: $(node_name "$n") is up and in the cluster"
}

# --- ZooKeeper --------------------------------------------------------------------------------

zk_dir() { echo "$CLUSTER_DIR/zk-$1"; }
zk_pid() { cat "$(zk_dir "$1")/zk.pid" 2>/dev/null || true; }
# The answer of a four-letter word from server N.
zk_4lw() {
  (exec 3<>"/dev/tcp/127.0.0.1/$(zk_port "$1")" && printf '%s' "$2" >&3 && timeout 2 cat <&3) 2>/dev/null || true
}
zk_mode() { zk_4lw "$1" srvr | sed -n 's/^Mode: //p'; }
zk_serving() { case "$(zk_mode "$1")" in leader|follower) return 0 ;; *) return 1 ;; esac; }

write_zk_config() {
  local n=$1 dir m
  dir=$(zk_dir "$n")
  mkdir -p "$dir/data" "$dir/conf"
  echo "$n" > "$dir/data/myid"
  {
    echo "tickTime=200"
    echo "initLimit=20"
    echo "syncLimit=10"
    echo "dataDir=$dir/data"
    echo "clientPort=$(zk_port "$n")"
    echo "clientPortAddress=127.0.0.1"
    echo "4lw.commands.whitelist=ruok,stat,srvr,cons,mntr"
    echo "admin.enableServer=false"
    echo "autopurge.purgeInterval=1"
    for m in "${NODES[@]}"; do echo "server.$m=127.0.0.1:$((2890 + m)):$((3890 + m))"; done
  } > "$dir/conf/zoo.cfg"
  cp /etc/zookeeper/conf/log4j.properties "$dir/conf/" 2>/dev/null || true
}

launch_zk_server() {
  local n=$1 dir pid
  dir=$(zk_dir "$n")
  pid=$(zk_pid "$n")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then return 0; fi
  write_zk_config "$n"
  echo "engines: starting ZooKeeper server $n on 127.0.0.1:$(zk_port "$n")"
  ZOOCFGDIR="$dir/conf" ZOO_LOG_DIR="$dir" ZOOPIDFILE="$dir/zk.pid" \
    "$ZK_BIN/zkServer.sh" start "$dir/conf/zoo.cfg" >"$dir/start.log" 2>&1 || true
}

await_zk_server() {
  local n=$1
  for _ in $(seq 1 $((READY_S * 2))); do zk_serving "$n" && return 0; sleep 0.5; done
  cat "$(zk_dir "$n")/start.log" >&2 2>/dev/null || true
  die "ZooKeeper server $n does not lead or follow after ${READY_S} s (mode: '$(zk_mode "$n")'; logs in $(zk_dir "$n"))"
}

start_zk_ensemble() {
  local n
  for n in "${NODES[@]}"; do launch_zk_server "$n"; done
  for n in "${NODES[@]}"; do await_zk_server "$n"; done
}

kill_zk_server() {
  local n=$1 signal=${2:-KILL} pid
  pid=$(zk_pid "$n")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || die "ZooKeeper server $n is not running (no live pid in $(zk_dir "$n")/zk.pid)"
  echo "engines: kill -$signal ZooKeeper server $n (pid $pid)"
  kill "-$signal" "$pid"
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -0 "$pid" 2>/dev/null && die "ZooKeeper server $n (pid $pid) did not stop"
  rm -f "$(zk_dir "$n")/zk.pid"
}

start_zk_server() {
  local n=$1
  launch_zk_server "$n"
  await_zk_server "$n"
  echo "engines: ZooKeeper server $n is $(zk_mode "$n")"
}

# --- all ----------------------------------------------------------------------------------------

print_urls() {
  echo "RIDESHARE_CLUSTER_AMQP=$(amqp_urls)"
  echo "RIDESHARE_CLUSTER_ZK=$(zk_connect)"
}

status() {
  local n down=0
  for n in "${NODES[@]}"; do
    if rabbit_node_up "$n"; then
      echo "RabbitMQ $(node_name "$n") (127.0.0.1:$(amqp_port "$n")): up, cluster: $(running_nodes "$n" | tr '\n' ' ')"
    else
      echo "RabbitMQ $(node_name "$n") (127.0.0.1:$(amqp_port "$n")): down"; down=1
    fi
  done
  for n in "${NODES[@]}"; do
    if zk_serving "$n"; then
      echo "ZooKeeper server $n (127.0.0.1:$(zk_port "$n")): $(zk_mode "$n")"
    else
      echo "ZooKeeper server $n (127.0.0.1:$(zk_port "$n")): down"; down=1
    fi
  done
  return $down
}

case "${1:-}" in
  start-cluster)
    mkdir -p "$CLUSTER_DIR"
    started=$SECONDS
    start_rabbit_cluster
    start_zk_ensemble
    echo "engines: the cluster is up in $((SECONDS - started)) s: 3 RabbitMQ nodes, 3 ZooKeeper servers"
    print_urls
    ;;
  stop-cluster)
    for n in "${NODES[@]}"; do
      if rabbit_node_up "$n"; then ctl "$n" stop >/dev/null 2>&1 || true; fi
      pid=$(rabbit_pid "$n")
      if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill "$pid" 2>/dev/null || true; fi
      rm -f "$(rabbit_dir "$n")/node.pid"
      pid=$(zk_pid "$n")
      if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; rm -f "$(zk_dir "$n")/zk.pid"; fi
    done
    echo "engines: the cluster is stopped (data kept in $CLUSTER_DIR)"
    ;;
  status-cluster) status ;;
  urls-cluster) print_urls ;;
  kill-rabbitmq-node) check_n "${2:-}"; kill_rabbit_node "$2" ;;
  start-rabbitmq-node) check_n "${2:-}"; start_rabbit_node "$2" ;;
  restart-rabbitmq-node)
    check_n "${2:-}"
    ctl "$2" stop_app >/dev/null || die "stop_app on $(node_name "$2") failed"
    sleep "${RIDESHARE_RABBIT_DOWN_S:-2}"
    ctl "$2" start_app >/dev/null || die "start_app on $(node_name "$2") failed"
    start_rabbit_node "$2"
    ;;
  kill-zk-server) check_n "${2:-}"; kill_zk_server "$2" KILL ;;
  start-zk-server) check_n "${2:-}"; start_zk_server "$2" ;;
  restart-zk-server) check_n "${2:-}"; kill_zk_server "$2" TERM; start_zk_server "$2" ;;
  *) die "usage: $0 start-cluster|stop-cluster|status-cluster|urls-cluster|kill-rabbitmq-node N|start-rabbitmq-node N|restart-rabbitmq-node N|kill-zk-server N|start-zk-server N|restart-zk-server N" ;;
esac
