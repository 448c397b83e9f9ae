#!/bin/sh
# installer/install.sh — installs Bazaar on a server without dpkg, in the same layout as
# the Debian packages (installer/README.md). Run as root. Idempotent: running it again
# installs the binary and unit again and never touches a configuration or data already
# there.
#
#   install.sh [--component agent|hub] [--from DIR]
#              [--hub URL --store ID --code CODE [--kafka-brokers LIST]]
#   install.sh --uninstall [--component agent|hub]   # binary and unit gone; data and config kept
#   install.sh --purge [--component agent|hub]       # and the data and configuration too
#
# --component  agent (default) or hub.
# --from DIR   where the release binaries are (default: target/release beside installer/,
#              else this script's own directory).
# --hub, --store, --code  enrol the agent with a one-time code from HQ
#              (`bazaar-hub store add ID --enrolment`) once it is installed.
set -eu

HERE="$(cd "$(dirname "$0")" && pwd)"
component=agent action=install from="" hub="" store="" code="" brokers=""

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "install.sh: $*" >&2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --component) component="$2"; shift 2 ;;
        --from) from="$2"; shift 2 ;;
        --hub) hub="$2"; shift 2 ;;
        --store) store="$2"; shift 2 ;;
        --code) code="$2"; shift 2 ;;
        --kafka-brokers) brokers="$2"; shift 2 ;;
        --uninstall) action=uninstall; shift ;;
        --purge) action=purge; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

case "$component" in agent|hub) ;; *) die "--component is agent or hub, not $component" ;; esac
[ "$(id -u)" = 0 ] || die "run as root (it creates a system user and writes /usr/bin, /etc/bazaar, /var/lib)"
if [ -n "$hub$code" ]; then
    [ "$component" = agent ] || die "--hub and --code enrol an agent: use --component agent"
    [ -n "$hub" ] && [ -n "$code" ] && [ -n "$store" ] || die "enrolment needs --hub URL, --store ID and --code CODE together"
fi

name="bazaar-$component"
unit="/usr/lib/systemd/system/$name.service"
conf="/etc/bazaar/$component.toml"
data="/var/lib/$name"
systemd_running() { [ -d /run/systemd/system ]; }

stop_service() {
    if systemd_running; then
        systemctl stop "$name.service" 2>/dev/null || true
    fi
}

uninstall() {
    stop_service
    if systemd_running; then
        systemctl disable "$name.service" 2>/dev/null || true
    fi
    rm -f "/usr/bin/$name" "$unit" "/usr/lib/sysusers.d/$name.conf"
    if systemd_running; then systemctl daemon-reload || true; fi
}

case "$action" in
    uninstall)
        uninstall
        say "$name removed; kept $conf and $data (install.sh --purge deletes them)"
        exit 0
        ;;
    purge)
        uninstall
        rm -rf "$data"
        rm -f "$conf" "$conf.new"
        rmdir /etc/bazaar 2>/dev/null || true
        say "$name purged: $conf and $data deleted (the $name user is kept)"
        exit 0
        ;;
esac

# Where the binary comes from.
if [ -z "$from" ]; then
    if [ -x "$HERE/../target/release/$name" ]; then from="$HERE/../target/release"; else from="$HERE"; fi
fi
binary="$from/$name"
[ -x "$binary" ] || die "no $binary: build it (cargo build --release -p $name) or give --from DIR"
for f in "$HERE/systemd/$name.service" "$HERE/sysusers/$name.conf" "$HERE/etc/$component.toml"; do
    [ -f "$f" ] || die "missing $f: run install.sh from an installer/ directory of the release"
done

# A downgrade that would lose data refuses before anything changes (as the package's preinst).
if [ "$component" = agent ] && [ -f "$data/agent.db" ]; then
    known="$("$binary" schema-version)"
    if command -v sqlite3 >/dev/null 2>&1; then
        stop_service
        on_disk="$(sqlite3 -readonly "$data/agent.db" 'PRAGMA user_version;')"
    else
        stop_service
        set -- $(od -An -j60 -N4 -tu1 "$data/agent.db")
        on_disk=$(( ($1 << 24) + ($2 << 16) + ($3 << 8) + $4 ))
    fi
    if [ "$on_disk" -gt "$known" ]; then
        die "refusing: the ledger $data/agent.db has schema $on_disk, and this $name knows $known only; it would lose or misread the store's movements. Install the version that wrote it (or newer). Nothing was changed."
    fi
fi

# The system user.
install -D -m 0644 "$HERE/sysusers/$name.conf" "/usr/lib/sysusers.d/$name.conf"
if command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers "/usr/lib/sysusers.d/$name.conf"
elif ! getent passwd "$name" >/dev/null; then
    useradd --system --user-group --home-dir "$data" --no-create-home --shell /usr/sbin/nologin "$name"
fi

stop_service
install -D -m 0755 "$binary" "/usr/bin/$name.new"
mv -f "/usr/bin/$name.new" "/usr/bin/$name"
install -D -m 0644 "$HERE/systemd/$name.service" "$unit"
install -d -m 0755 /etc/bazaar
install -d -m 0700 -o "$name" -g "$name" "$data"
if [ ! -f "$conf" ]; then
    install -m 0600 "$HERE/etc/$component.toml" "$conf"
fi
if [ "$component" = agent ]; then
    chown "$name:$name" "$conf"
    chmod 0600 "$conf"
    find "$data" -maxdepth 1 -name 'agent.db*' -exec chown "$name:$name" {} +
else
    chown "root:$name" "$conf"
    chmod 0640 "$conf"
fi
if systemd_running; then
    systemctl daemon-reload
    systemctl enable "$name.service"
fi
say "installed /usr/bin/$name $("/usr/bin/$name" --version | cut -d' ' -f2), $unit, $conf, $data"

if [ -n "$code" ]; then
    set -- --hub "$hub" --store "$store" --code "$code"
    if [ -n "$brokers" ]; then set -- "$@" --kafka-brokers "$brokers"; fi
    "/usr/bin/$name" enroll "$@"
elif systemd_running; then
    if runuser -u "$name" -- "/usr/bin/$name" check-config --config "$conf" >/dev/null 2>&1; then
        systemctl restart "$name.service"
    elif [ "$component" = agent ]; then
        say "not enrolled yet: install.sh --hub URL --store ID --code CODE (or bazaar-agent enroll ...)"
    else
        say "set admin_token and mysql_url in $conf, then: systemctl start $name"
    fi
fi
