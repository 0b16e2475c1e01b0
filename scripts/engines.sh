#!/usr/bin/env bash
# Installs (from Debian's packages, when missing), starts and stops the real engines the tests
# use, on loopback only: RabbitMQ on 127.0.0.1:5672 and ZooKeeper on 127.0.0.1:2181 with a
# short tick (200 ms), so sessions expire in about half a second to 4 seconds.
#
#   scripts/engines.sh start   install if needed, start both, wait until they answer
#   scripts/engines.sh stop    stop what `start` started
#   scripts/engines.sh status
#   scripts/engines.sh restart-zk | restart-rabbitmq   (fault injection, for `rideshare chaos`)
#   scripts/engines.sh kill-zk | kill-rabbitmq         SIGKILL the engine `start` started
#   scripts/engines.sh start-zk | start-rabbitmq       start one engine again (after a kill)
#   scripts/engines.sh can <action>                    whether <action> can act on the running
#                                                      engines (exit 1 and why, on stderr)
#   scripts/engines.sh start-cluster | stop-cluster | status-cluster | kill-rabbitmq-node N | ...
#       the clustered engines (3 RabbitMQ nodes, a 3-server ZooKeeper ensemble) on other ports:
#       see scripts/engines-cluster.sh
set -euo pipefail

STATE_DIR=${RIDESHARE_ENGINES_DIR:-/tmp/rideshare-engines}
ZK_PORT=${RIDESHARE_ZK_PORT:-2181}
ZK_BIN=/usr/share/zookeeper/bin

die() { echo "engines: $*" >&2; exit 1; }

install_missing() {
  local missing=()
  command -v rabbitmq-server >/dev/null 2>&1 || missing+=(rabbitmq-server)
  [ -x "$ZK_BIN/zkServer.sh" ] || missing+=(zookeeper)
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "engines: installing ${missing[*]} from Debian's packages"
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install ${missing[*]} by hand"
  [ "$(id -u)" = 0 ] || die "installing ${missing[*]} needs root"
  apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
}

rabbit_up() { rabbitmqctl -q status >/dev/null 2>&1; }
# The OS pid of RabbitMQ's Erlang VM (beam), asked of the node itself.
rabbit_pid() { rabbitmqctl -q eval 'os:getpid().' 2>/dev/null | tr -dc 0-9; }
zk_started_here() { [ -f "$STATE_DIR/zk/zk.pid" ] && kill -0 "$(cat "$STATE_DIR/zk/zk.pid")" 2>/dev/null; }
# Whether `action` can act on the engines as they run now; why not on stderr.
can() {
  case "${1:-}" in
    restart-zk|kill-zk)
      zk_started_here || die "ZooKeeper on 127.0.0.1:$ZK_PORT was not started by scripts/engines.sh (no live $STATE_DIR/zk/zk.pid)" ;;
    start-zk) [ -x "$ZK_BIN/zkServer.sh" ] || die "ZooKeeper is not installed ($ZK_BIN/zkServer.sh)" ;;
    restart-rabbitmq) rabbit_up || die "rabbitmqctl cannot reach a RabbitMQ node" ;;
    kill-rabbitmq|start-rabbitmq)
      { [ -f "$STATE_DIR/rabbit.started" ] && rabbit_up; } \
        || die "RabbitMQ was not started by scripts/engines.sh (no $STATE_DIR/rabbit.started), or is down" ;;
    *) die "can: unknown action ${1:-}" ;;
  esac
}
zk_up() {
  # ZooKeeper answers `imok` without a newline and closes: read hits EOF, the answer is still set.
  (exec 3<>"/dev/tcp/127.0.0.1/$ZK_PORT" && printf 'ruok' >&3 && { read -r -t 2 answer <&3 || true; } && [ "${answer:-}" = imok ]) 2>/dev/null
}

start_rabbit() {
  if rabbit_up; then echo "engines: RabbitMQ already running"; return 0; fi
  echo "engines: starting RabbitMQ on 127.0.0.1:5672"
  RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_DIST_PORT=25672 rabbitmq-server -detached >/dev/null 2>&1 || true
  touch "$STATE_DIR/rabbit.started"
  for _ in $(seq 1 120); do rabbit_up && return 0; sleep 0.5; done
  die "RabbitMQ did not start within 60 s (see /var/log/rabbitmq/)"
}

start_zk() {
  if zk_up; then echo "engines: ZooKeeper already running"; return 0; fi
  echo "engines: starting ZooKeeper on 127.0.0.1:$ZK_PORT (tickTime 200 ms)"
  mkdir -p "$STATE_DIR/zk/data" "$STATE_DIR/zk/conf"
  cat > "$STATE_DIR/zk/conf/zoo.cfg" <<CFG
tickTime=200
initLimit=10
syncLimit=5
dataDir=$STATE_DIR/zk/data
clientPort=$ZK_PORT
clientPortAddress=127.0.0.1
4lw.commands.whitelist=ruok,stat,srvr
admin.enableServer=false
CFG
  cp /etc/zookeeper/conf/log4j.properties "$STATE_DIR/zk/conf/" 2>/dev/null || true
  ZOOCFGDIR="$STATE_DIR/zk/conf" ZOO_LOG_DIR="$STATE_DIR/zk" ZOOPIDFILE="$STATE_DIR/zk/zk.pid" \
    "$ZK_BIN/zkServer.sh" start "$STATE_DIR/zk/conf/zoo.cfg" >"$STATE_DIR/zk/start.log" 2>&1 || true
  for _ in $(seq 1 120); do zk_up && return 0; sleep 0.5; done
  cat "$STATE_DIR/zk/start.log" >&2 || true
  die "ZooKeeper did not start within 60 s (see $STATE_DIR/zk/)"
}

case "${1:-}" in
  start)
    mkdir -p "$STATE_DIR"
    install_missing
    start_rabbit
    start_zk
    echo "engines: RabbitMQ and ZooKeeper are up"
    ;;
  stop)
    if [ -f "$STATE_DIR/rabbit.started" ]; then
      rabbitmqctl -q stop >/dev/null 2>&1 || true
      rm -f "$STATE_DIR/rabbit.started"
    fi
    if [ -f "$STATE_DIR/zk/zk.pid" ]; then
      kill "$(cat "$STATE_DIR/zk/zk.pid")" 2>/dev/null || true
      rm -f "$STATE_DIR/zk/zk.pid"
    fi
    ;;
  restart-zk)
    # For fault injection: stop ZooKeeper (as started by `start`) and start it again.
    [ -f "$STATE_DIR/zk/zk.pid" ] || die "no ZooKeeper started by this script to restart"
    kill "$(cat "$STATE_DIR/zk/zk.pid")" 2>/dev/null || true
    for _ in $(seq 1 40); do zk_up || break; sleep 0.25; done
    rm -f "$STATE_DIR/zk/zk.pid"
    start_zk
    ;;
  kill-zk)
    # For fault injection: SIGKILL ZooKeeper (as started by `start`); `start-zk` starts it again.
    can kill-zk
    pid=$(cat "$STATE_DIR/zk/zk.pid")
    kill -9 "$pid"
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$STATE_DIR/zk/zk.pid"
    ;;
  start-zk)
    mkdir -p "$STATE_DIR"
    start_zk
    ;;
  kill-rabbitmq)
    # For fault injection: SIGKILL RabbitMQ's Erlang VM (as started by `start`): no shutdown at
    # all. `start-rabbitmq` starts it again.
    can kill-rabbitmq
    pid=$(rabbit_pid)
    [ -n "$pid" ] || die "cannot find RabbitMQ's OS pid"
    kill -9 "$pid"
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    ;;
  start-rabbitmq)
    mkdir -p "$STATE_DIR"
    start_rabbit
    ;;
  can)
    can "${2:-}"
    ;;
  restart-rabbitmq)
    # For fault injection: stop the RabbitMQ application and start it again (data is kept).
    rabbitmqctl -q stop_app >/dev/null
    sleep "${RIDESHARE_RABBIT_DOWN_S:-2}"
    rabbitmqctl -q start_app >/dev/null
    rabbitmqctl -q await_startup >/dev/null
    ;;
  status)
    rabbit_up && echo "RabbitMQ: up" || echo "RabbitMQ: down"
    zk_up && echo "ZooKeeper: up" || echo "ZooKeeper: down"
    ;;
  start-cluster|stop-cluster|status-cluster|urls-cluster|kill-rabbitmq-node|start-rabbitmq-node|\
  restart-rabbitmq-node|kill-zk-server|start-zk-server|restart-zk-server)
    # The clustered engines (3 RabbitMQ nodes, 3 ZooKeeper servers, other ports): see there.
    install_missing
    exec "$(dirname "$0")/engines-cluster.sh" "$@"
    ;;
  *) die "usage: $0 start|stop|status|restart-zk|restart-rabbitmq|kill-zk|kill-rabbitmq|start-zk|start-rabbitmq|can <action>, or a cluster subcommand (scripts/engines-cluster.sh)" ;;
esac
