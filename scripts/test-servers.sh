#!/usr/bin/env bash
# The real servers the tests talk to, on loopback and Unix sockets only, under build/servers:
#
#   redis      one redis-server on 127.0.0.1:$KHALA_TEST_REDIS_PORT and a Unix socket
#   cluster    three redis-server nodes in cluster mode, 127.0.0.1:$KHALA_TEST_CLUSTER_PORT..+2,
#              the 16,384 slots split between them, no replicas
#   surreal    the SurrealDB front (tests/support/surreal/front.mjs: the real SurrealDB engine
#              behind an HTTP front, docs/testing.md "SurrealDB") on
#              127.0.0.1:$KHALA_TEST_SURREAL_PORT, user root, password root, its store on disk
#
# Sourced by scripts/test.sh (start_test_servers / stop_test_servers); a developer can also run
# it by hand to get the same servers for ctest:
#
#   eval "$(scripts/test-servers.sh start)"   # starts them, prints the exports
#   ctest --test-dir build/test-plain
#   scripts/test-servers.sh stop
#
# What the tests read (each test fails with a message naming this script if one is missing):
#   KHALA_TEST_REDIS_URL          redis://127.0.0.1:PORT
#   KHALA_TEST_REDIS_UNIX_URL     unix:///.../redis.sock
#   KHALA_TEST_REDIS_CLUSTER_URL  redis://127.0.0.1:CLUSTER_PORT (any node; the others follow)
#   KHALA_TEST_REDIS_SERVER       the redis-server binary, for tests that start, kill and
#                                 restart a private instance of their own
#   KHALA_TEST_SURREAL_URL        http://root:root@127.0.0.1:SURREAL_PORT (the shared front;
#                                 private fronts: tests/surreal_util.h)
KHALA_TEST_REDIS_PORT=${KHALA_TEST_REDIS_PORT:-16379}
KHALA_TEST_CLUSTER_PORT=${KHALA_TEST_CLUSTER_PORT:-17001}
KHALA_TEST_SURREAL_PORT=${KHALA_TEST_SURREAL_PORT:-38000}
KHALA_TEST_NODE=${KHALA_TEST_NODE:-node}
KHALA_TEST_SURREAL_FRONT=${KHALA_TEST_SURREAL_FRONT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/support/surreal/front.mjs}
KHALA_SERVERS_DIR=${KHALA_SERVERS_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/build/servers}

# wait_redis <redis-cli args...>: up to 10 s for PONG.
wait_redis() {
    local i
    for i in $(seq 100); do
        if [[ $(redis-cli "$@" ping 2>/dev/null) == PONG ]]; then
            return 0
        fi
        sleep 0.1
    done
    echo "test-servers: redis-server ($*) did not answer PING within 10 s" >&2
    return 1
}

# wait_surreal <port> <pid> <log>: up to 20 s for GET /health 200 (the engine opens its store
# after the port listens); fails at once when the front exits.
wait_surreal() {
    local i
    for i in $(seq 200); do
        if curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$1/health" 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$2" 2>/dev/null; then
            echo "test-servers: the SurrealDB front exited at start; $3 ends:" >&2
            tail -n 20 "$3" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "test-servers: the SurrealDB front on 127.0.0.1:$1 did not answer GET /health within" \
        "20 s; $3 ends:" >&2
    tail -n 20 "$3" >&2
    return 1
}

# port_free <port>: nothing listens on 127.0.0.1:<port>.
port_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start_test_servers() {
    local server port dir
    server=$(command -v redis-server) || {
        echo "test-servers: redis-server is not installed (scripts/deps.sh installs it)" >&2
        return 1
    }
    # A cluster node also listens on its bus port, 10000 above its own: redis-server refuses a
    # node port above 55535 (and only says so in its log).
    if ((KHALA_TEST_CLUSTER_PORT + 2 > 55535)); then
        echo "test-servers: KHALA_TEST_CLUSTER_PORT=$KHALA_TEST_CLUSTER_PORT is too high: the" \
            "cluster's nodes use it..+2 and their bus ports 10000 above, so at most 55533" >&2
        return 1
    fi
    stop_test_servers
    rm -rf "$KHALA_SERVERS_DIR"
    mkdir -p "$KHALA_SERVERS_DIR"
    for port in "$KHALA_TEST_REDIS_PORT" "$KHALA_TEST_CLUSTER_PORT" \
        $((KHALA_TEST_CLUSTER_PORT + 1)) $((KHALA_TEST_CLUSTER_PORT + 2)) \
        "$KHALA_TEST_SURREAL_PORT"; do
        if ! port_free "$port"; then
            echo "test-servers: 127.0.0.1:$port is taken; set KHALA_TEST_REDIS_PORT /" \
                "KHALA_TEST_CLUSTER_PORT / KHALA_TEST_SURREAL_PORT to free ports" >&2
            return 1
        fi
    done

    # The single server: loopback port and Unix socket, no persistence.
    dir=$KHALA_SERVERS_DIR/redis
    mkdir -p "$dir"
    "$server" --bind 127.0.0.1 --port "$KHALA_TEST_REDIS_PORT" --unixsocket "$dir/redis.sock" \
        --unixsocketperm 700 --dir "$dir" --save '' --appendonly no --daemonize yes \
        --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >/dev/null
    wait_redis -p "$KHALA_TEST_REDIS_PORT" || return 1

    # The cluster: three masters.
    local nodes=()
    for port in "$KHALA_TEST_CLUSTER_PORT" $((KHALA_TEST_CLUSTER_PORT + 1)) \
        $((KHALA_TEST_CLUSTER_PORT + 2)); do
        dir=$KHALA_SERVERS_DIR/cluster-$port
        mkdir -p "$dir"
        "$server" --bind 127.0.0.1 --port "$port" --cluster-enabled yes \
            --cluster-config-file "$dir/nodes.conf" --cluster-node-timeout 2000 --dir "$dir" \
            --save '' --appendonly no --daemonize yes --pidfile "$dir/redis.pid" \
            --logfile "$dir/redis.log" >/dev/null
        wait_redis -p "$port" || return 1
        nodes+=("127.0.0.1:$port")
    done
    if ! redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes \
        >"$KHALA_SERVERS_DIR/cluster-create.log" 2>&1; then
        cat "$KHALA_SERVERS_DIR/cluster-create.log" >&2
        echo "test-servers: redis-cli --cluster create failed" >&2
        return 1
    fi
    local i
    for i in $(seq 100); do
        if redis-cli -p "$KHALA_TEST_CLUSTER_PORT" cluster info 2>/dev/null |
            grep -q '^cluster_state:ok'; then
            break
        fi
        sleep 0.1
    done
    if ! redis-cli -p "$KHALA_TEST_CLUSTER_PORT" cluster info | grep -q '^cluster_state:ok'; then
        echo "test-servers: the cluster did not reach cluster_state:ok within 10 s" >&2
        return 1
    fi

    # SurrealDB: the front over the real engine, its store on disk (RocksDB) under the servers'
    # directory. Its pid file is what stop_test_servers kills.
    if ! command -v "$KHALA_TEST_NODE" >/dev/null 2>&1; then
        echo "test-servers: $KHALA_TEST_NODE (node) is not installed (scripts/deps.sh installs" \
            "it)" >&2
        return 1
    fi
    dir=$KHALA_SERVERS_DIR/surreal
    mkdir -p "$dir"
    "$KHALA_TEST_NODE" "$KHALA_TEST_SURREAL_FRONT" --port "$KHALA_TEST_SURREAL_PORT" \
        --host 127.0.0.1 --data "$dir/data" --user root --pass root \
        </dev/null >"$dir/front.log" 2>&1 &
    echo $! >"$dir/front.pid"
    wait_surreal "$KHALA_TEST_SURREAL_PORT" "$(cat "$dir/front.pid")" "$dir/front.log" ||
        return 1

    export KHALA_TEST_REDIS_URL="redis://127.0.0.1:$KHALA_TEST_REDIS_PORT"
    export KHALA_TEST_REDIS_UNIX_URL="unix://$KHALA_SERVERS_DIR/redis/redis.sock"
    export KHALA_TEST_REDIS_CLUSTER_URL="redis://127.0.0.1:$KHALA_TEST_CLUSTER_PORT"
    export KHALA_TEST_REDIS_SERVER="$server"
    export KHALA_TEST_SURREAL_URL="http://root:root@127.0.0.1:$KHALA_TEST_SURREAL_PORT"
}

stop_test_servers() {
    local pidfile pid
    [[ -d $KHALA_SERVERS_DIR ]] || return 0
    for pidfile in "$KHALA_SERVERS_DIR"/*/redis.pid "$KHALA_SERVERS_DIR"/surreal/front.pid; do
        [[ -f $pidfile ]] || continue
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        # Still there after 5 s (the SurrealDB engine can be slow to close): SIGKILL.
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$pidfile"
    done
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -euo pipefail
    case ${1:-} in
        start)
            start_test_servers >&2
            echo "export KHALA_TEST_REDIS_URL=$KHALA_TEST_REDIS_URL"
            echo "export KHALA_TEST_REDIS_UNIX_URL=$KHALA_TEST_REDIS_UNIX_URL"
            echo "export KHALA_TEST_REDIS_CLUSTER_URL=$KHALA_TEST_REDIS_CLUSTER_URL"
            echo "export KHALA_TEST_REDIS_SERVER=$KHALA_TEST_REDIS_SERVER"
            echo "export KHALA_TEST_SURREAL_URL=$KHALA_TEST_SURREAL_URL"
            ;;
        stop) stop_test_servers ;;
        *)
            echo "usage: $0 start|stop" >&2
            exit 2
            ;;
    esac
fi
