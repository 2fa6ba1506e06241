#!/usr/bin/env bash
# Installs everything sandcell needs on a fresh Debian 12 machine (run as root): Debian
# packages, npm packages, the build, the `sandcell` command on PATH. Then runs a command in a
# sandbox end to end and starts the server (`sandcell serve`, in the foreground; Ctrl-C stops
# it and leaves sandboxes for the next start). `--deps-only` stops after the build, before the
# command goes on PATH (the test command uses it).
set -euo pipefail
cd "$(dirname "$0")/.."

deps_only=false
[[ "${1:-}" == "--deps-only" ]] && deps_only=true

if [[ $(id -u) -ne 0 ]]; then
  echo "install.sh: run as root (sandboxes need cgroups, mounts and user namespaces)" >&2
  exit 1
fi

# Node 20.18+ must already be there: Debian 12's own nodejs is 18, too old for our dependencies.
if ! node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=18)?0:1)' 2>/dev/null; then
  echo "install.sh: Node.js >= 20.18 is required (found: $(node --version 2>/dev/null || echo none))" >&2
  exit 1
fi

debian_packages=(
  bubblewrap      # namespaces for the container driver
  e2fsprogs       # mkfs.ext4 for sandbox disks
  util-linux      # mount helpers, unshare, setpriv
  mmdebstrap      # builds the debian template's root filesystem
  procps          # pkill/ps, used by tests inside base sandboxes
  iproute2        # network namespaces, veth and TAP links of sandbox network slots
  nftables        # sandbox egress rules and NAT (sandcell's own tables only)
  conntrack       # drops a released slot's tracked connections
  openssl         # test certificates for the network tests
  build-essential # node-gyp: native addons build from source
  python3         # node-gyp
  ca-certificates
  qemu-system-x86 # the qemu microVM driver (microvm machine, KVM or TCG)
  erofs-utils     # mkfs.erofs: read-only template and agent images for microVMs
  socat           # relays a microVM's agent port to a host Unix socket
  lz4             # unpacks Debian's cloud kernel (bzImage) to the vmlinux microVMs boot
  busybox-static  # the base template's tools inside a microVM
  docker-registry # a real OCI registry on 127.0.0.1 for the image pull tests
  skopeo          # the image pull benchmark's baseline
)
missing=()
for package in "${debian_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "install.sh: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The microVM drivers fetch Debian's cloud kernel with `apt-get download`, which needs package lists.
if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
  apt-get update -qq
fi

# npm ci only when the lockfile changed since the last install: it rebuilds native addons.
if [[ ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
  echo "install.sh: installing npm packages"
  npm ci --no-audit --no-fund
fi

npm run --silent build

# The test command stops here: a checkout under test must not replace the installed command.
if [[ "$deps_only" == true ]]; then
  exit 0
fi
ln -sf "$PWD/packages/cli/bin/sandcell" /usr/local/bin/sandcell

# Sandboxes reach the internet through NAT, which needs the host to forward packets. Said out
# loud and kept in one file of ours; the server itself only reports a host that does not.
if [[ "$(cat /proc/sys/net/ipv4/ip_forward)" != "1" ]]; then
  echo "install.sh: enabling net.ipv4.ip_forward for sandbox internet access (/etc/sysctl.d/60-sandcell.conf)"
  echo 'net.ipv4.ip_forward = 1' >/etc/sysctl.d/60-sandcell.conf
  sysctl -q -w net.ipv4.ip_forward=1
fi

echo "install.sh: installed. Running a command in a fresh sandbox:"
sandcell sandbox run -- /bin/sh -c 'echo "hello from sandbox $(hostname): uid $(id -u), $(ls /proc | grep -c "^[0-9]") processes visible"'
echo "install.sh: starting the server (SANDCELL_* variables and /etc/sandcell.yaml configure it)"
config_flag=()
[[ -f /etc/sandcell.yaml ]] && config_flag=(--config /etc/sandcell.yaml)
exec sandcell serve "${config_flag[@]}"
