# Sourced by run.sh and test.sh: installs the Debian packages hae builds with, only those missing.
hae_need=""
for p in libyaml-dev libcriterion-dev cmake gcc make; do
  dpkg -s "$p" >/dev/null 2>&1 || hae_need="$hae_need $p"
done
if [ -n "$hae_need" ]; then
  hae_sudo=""
  [ "$(id -u)" -eq 0 ] || hae_sudo="sudo"
  echo "installing:$hae_need" >&2
  # a fresh machine has no package lists: update first
  $hae_sudo apt-get update
  $hae_sudo apt-get install -y $hae_need
fi
