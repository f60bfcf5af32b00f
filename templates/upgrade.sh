# The rest is the same for every build (templates/upgrade.sh; docs/upgrades.md).
# It changes only /var/lib/cubeboot: the new helper, checked against the
# lock's SHA-256 before it is kept, and the new plan, checked against its
# own; then the helper runs `upgrade --to` in a transient unit, so a dropped
# ssh session does not stop it, and does on this node what changed.
set -eu
umask 077
state=/var/lib/cubeboot
helper=$state/cube-firstboot.upgrade
plan=$state/plan.next.json
unit=cube-firstboot-upgrade
say() { echo "cubeboot upgrade: $*" >&2; }
for tool in systemd-run systemctl sha256sum base64; do
  command -v "$tool" >/dev/null || { say "$tool is missing; nothing changed"; exit 1; }
done
# One helper at a time: an upgrade, or a run resumed after its reboot.
for running in "$unit.service" cube-firstboot.service cube-firstboot-resume.service; do
  if systemctl is-active --quiet "$running" </dev/null; then
    say "$running is running on this node (journalctl -u $running); nothing changed"
    exit 1
  fi
done
mkdir -p "$state"
fetch() {
  if command -v curl >/dev/null; then curl -fsSL --retry 5 --connect-timeout 20 -o "$2" "$1"
  elif command -v wget >/dev/null; then wget -q -t 5 -T 20 -O "$2" "$1"
  else python3 -c 'import sys,urllib.request as u;open(sys.argv[2],"wb").write(u.urlopen(sys.argv[1],timeout=60).read())' "$1" "$2"
  fi
}
ok=
for url in "$@"; do
  rm -f "$helper.part"
  fetch "$url" "$helper.part" </dev/null && echo "$helper_sha256  $helper.part" | sha256sum -c --status && { ok=1; break; }
  say "$url: fetch failed or sha256 is not $helper_sha256"
done
if [ -z "$ok" ]; then
  rm -f "$helper.part"
  say "no helper with sha256 $helper_sha256; nothing changed"
  exit 1
fi
chmod 0700 "$helper.part"
mv -f "$helper.part" "$helper"
printf '%s\n' "$plan_b64" | base64 -d > "$plan.part"
if ! echo "$plan_sha256  $plan.part" | sha256sum -c --status; then
  rm -f "$plan.part"
  say "the plan did not decode to sha256 $plan_sha256; nothing changed"
  exit 1
fi
chmod 0600 "$plan.part"
mv -f "$plan.part" "$plan"
# Refusals (a node whose run is not done, ...) reach this terminal now.
"$helper" upgrade --check --to "$plan" --helper "$helper#$helper_sha256" </dev/null >&2 ||
  { say "the helper refused (above); nothing changed"; exit 1; }
systemd-run --unit="$unit" --collect --quiet \
  --property=EnvironmentFile=-/etc/cubeboot/environment \
  "$helper" upgrade --to "$plan" --helper "$helper#$helper_sha256" </dev/null
say "started $unit.service: it does what changed and reports like a first run"
say "follow it: journalctl -fu $unit; cube-firstboot status --wait"
