#!/usr/bin/env bash
# The Debian packages `make test` needs besides Python: Chromium and its driver (the report's
# browser test) and the OpenSSH server (the SSH remote tests start their own sshd). Run by
# `make test` before anything else. Installs what is missing when it can (apt-get, as root or
# through sudo without a password); otherwise stops with one sentence saying what to install.
set -euo pipefail

# sshd lives in sbin, which is not on every user's PATH; tests/ssh_server.py looks there too.
sbin_path="$PATH:/usr/sbin:/usr/local/sbin"

# One line per missing package: the Debian package, then the command it provides.
missing_packages() {
  command -v chromium >/dev/null || echo "chromium chromium"
  command -v chromedriver >/dev/null || echo "chromium-driver chromedriver"
  PATH="$sbin_path" command -v sshd >/dev/null || echo "openssh-server sshd"
}

stop() {
  echo "$*" >&2
  exit 1
}

mapfile -t missing < <(missing_packages)
[ "${#missing[@]}" -eq 0 ] && exit 0
packages=("${missing[@]%% *}")
commands=("${missing[@]##* }")
install_line="apt-get install -y ${packages[*]}"

command -v apt-get >/dev/null ||
  stop "make test needs the commands ${commands[*]} (Debian packages ${packages[*]}) and this" \
    "system has no apt-get: install them with its package manager, then run make test again."
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  stop "make test needs the Debian packages ${packages[*]}, which this user cannot install" \
    "(not root, no sudo without a password): run \`sudo $install_line\`, then make test again."
fi
echo "make test: installing the Debian packages ${packages[*]} ($install_line)"
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
mapfile -t missing < <(missing_packages)
[ "${#missing[@]}" -eq 0 ] ||
  stop "make test: \`$install_line\` ran, yet the commands ${missing[*]##* } are still missing:" \
    "install them by other means, then run make test again."
