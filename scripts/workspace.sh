#!/usr/bin/env bash
# Creates the Zephyr workspace (~/zephyrproject, or $ZEPHYR_WORKSPACE) when there is none:
# Zephyr v4.3.0, and of its modules the ones this project builds with (picolibc, zcbor,
# zephyr-lang-rust, mbedtls, open-amp + libmetal), then `west init -l`. Called by
# scripts/bootstrap.sh; idempotent: an existing workspace keeps what it has, and only gains the
# modules it lacks whose local sources are named below (nothing is replaced or updated).
#
# Two ways, tried in this order:
# 1. Local sources, when $IVNET_ZEPHYR_SRC names one (machines without GitHub): git
#    repositories (with or without a work tree) holding each project. What a copy of them lost
#    is recreated here (docs/zephyr-workspace.md):
#      IVNET_ZEPHYR_SRC      git directory holding Zephyr 4.3.0
#      IVNET_ZEPHYR_REF      its commit or tag           (default v4.3.0)
#      IVNET_ZEPHYR_SUBDIR   the folder that is Zephyr   (default: the whole tree)
#      IVNET_ZCBOR_SRC       zcbor                       (ref IVNET_ZCBOR_REF, default Zephyr 4.3's pin)
#      IVNET_PICOLIBC_SRC    picolibc                    (ref IVNET_PICOLIBC_REF, default Zephyr 4.3's
#                            pin when the repository has it, else its newest commit)
#      IVNET_MBEDTLS_SRC     mbedtls (optional)          (ref IVNET_MBEDTLS_REF, default as picolibc's;
#                            Zephyr's HTTP server sample needs it, for websockets)
#      IVNET_RUST_SRC        zephyr-lang-rust (required by the driver) (ref IVNET_RUST_REF, default dd73abc)
#      IVNET_OPENAMP_SRC     open-amp (optional)         (ref IVNET_OPENAMP_REF, default as picolibc's;
#                            Zephyr's C eth_ivshmem needs it: snippet ivshmem2-eth)
#      IVNET_LIBMETAL_SRC    libmetal (optional)         (ref IVNET_LIBMETAL_REF, default as picolibc's;
#                            open-amp needs it)
# 2. Otherwise from GitHub with west: `west init -m .../zephyr --mr v4.3.0` and `west update`
#    of just those modules (manifest.project-filter), shallow.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
ws=${ZEPHYR_WORKSPACE:-$HOME/zephyrproject}
venv=${IVNET_VENV:-$ws/.venv}
log() { printf '\033[1mworkspace:\033[0m %s\n' "$*"; }
die() { printf '\033[1;31mworkspace: %s\033[0m\n' "$*" >&2; exit 1; }

# Zephyr 4.3.0's west.yml pins.
ZCBOR_PIN=9b07780aca6fb21f82a241ba386ad9b379809337
PICOLIBC_PIN=ca8b6ebba5226a75545e57a140443168a26ba664
RUST_PIN=dd73abc242e995784da62352fe8c70d9a6c7ac2e
MBEDTLS_PIN=c5b06d89c9c498d8fc8659ce31f7e53137b6270f
OPENAMP_PIN=c30a6d8b92fcebdb797fc1a7698e8729e250f637
LIBMETAL_PIN=91d38634d1882f0a2151966f8c5c230ce1c0de7b

git_id=(-c user.name=ivnet-bootstrap -c user.email=ivnet-bootstrap@localhost)

# A git directory: a bare repository, a mirror, or a work tree's .git.
gitdir() {
  local d=$1
  [ -d "$d" ] || die "$2: $d is not a directory"
  if git --git-dir="$d" rev-parse --git-dir >/dev/null 2>&1; then echo "$d"; return; fi
  if git --git-dir="$d/.git" rev-parse --git-dir >/dev/null 2>&1; then echo "$d/.git"; return; fi
  die "$2: $d is not a git repository"
}

has_ref() { git --git-dir="$1" cat-file -e "$2^{commit}" 2>/dev/null; }

# Extracts `ref`'s tree (or its folder `sub`) from git directory `g` into `dest`. Copies made
# from snapshots may lack some blobs: what git cannot read is reported, the rest extracted;
# `must` names a file that has to be there.
extract() {
  local g=$1 ref=$2 sub=$3 dest=$4 must=$5 strip=0
  shift 5
  mkdir -p "$dest"
  if [ -n "$sub" ]; then strip=$(awk -F/ '{print NF}' <<<"${sub%/}"); fi
  # shellcheck disable=SC2068
  git --git-dir="$g" archive "$ref" -- ${sub:-.} "$@" 2>"$dest.archive-errors" |
    tar -x -C "$dest" --strip-components="$strip" || true
  [ -f "$dest/$must" ] || die "extracting $ref${sub:+:$sub} from $g gave no $must (see $dest.archive-errors)"
  if [ -s "$dest.archive-errors" ]; then
    log "note: git archive reported (a snapshot without some blobs; checked that $must is there):"
    sed 's/^/    /' "$dest.archive-errors" | head -5
  fi
  rm -f "$dest.archive-errors"
}

# What the copy of Zephyr lost (files its own .gitignore matches) and the one fix its build
# with warnings as errors needs; each only when missing.
fix_zephyr() {
  local z=$1 added=()
  if [ ! -f "$z/drivers/i2c/target/Kconfig" ]; then
    mkdir -p "$z/drivers/i2c/target"
    cat >"$z/drivers/i2c/target/Kconfig" <<'EOF'
menuconfig I2C_TARGET
	bool "I2C target support"

if I2C_TARGET

config I2C_TARGET_INIT_PRIORITY
	int "I2C target init priority"
	default 60

config I2C_TARGET_BUFFER_MODE
	bool "I2C target buffer mode"

endif
EOF
    : >"$z/drivers/i2c/target/CMakeLists.txt"
    added+=(drivers/i2c/target/Kconfig drivers/i2c/target/CMakeLists.txt)
  fi
  if [ ! -f "$z/subsys/logging/backends/Kconfig.swo" ]; then
    cat >"$z/subsys/logging/backends/Kconfig.swo" <<'EOF'
config LOG_BACKEND_SWO
	bool "Serial Wire Output (SWO) backend"

if LOG_BACKEND_SWO

config LOG_BACKEND_SWO_REF_FREQ_HZ
	int "SWO reference clock frequency"
	default 0

config LOG_BACKEND_SWO_FREQ_HZ
	int "SWO output frequency"
	default 0

endif
EOF
    added+=(subsys/logging/backends/Kconfig.swo)
  fi
  if [ ! -f "$z/share/sysbuild/build/Kconfig" ]; then
    mkdir -p "$z/share/sysbuild/build"
    cat >"$z/share/sysbuild/build/Kconfig" <<'EOF'
config COMPILER_WARNINGS_AS_ERRORS
	bool "Warnings as errors"

config MERGED_HEX_FILES
	bool "Merged hex files"
EOF
    added+=(share/sysbuild/build/Kconfig)
  fi
  # z_move_thread_to_end_of_prio_q() calls a static function the copy does not define.
  if grep -q 'move_thread_to_end_of_prio_q(thread);' "$z/kernel/sched.c" &&
     ! grep -q '^static void move_thread_to_end_of_prio_q' "$z/kernel/sched.c"; then
    python3 - "$z/kernel/sched.c" <<'EOF'
import sys
p = sys.argv[1]
s = open(p).read()
anchor = "void z_move_thread_to_end_of_prio_q(struct k_thread *thread)"
assert anchor in s, "kernel/sched.c: no z_move_thread_to_end_of_prio_q"
body = """static void move_thread_to_end_of_prio_q(struct k_thread *thread)
{
	if (z_is_thread_queued(thread)) {
		dequeue_thread(thread);
	}
	queue_thread(thread);
	update_cache(thread == _current);
}

"""
open(p, "w").write(s.replace(anchor, body + anchor, 1))
EOF
    added+=(kernel/sched.c)
  fi
  [ ${#added[@]} -eq 0 ] || log "recreated in zephyr/: ${added[*]}"
  # Zephyr's build runs `git describe`: a repository with an annotated tag.
  if [ ! -d "$z/.git" ]; then
    git -C "$z" init -q
    git -C "$z" add -A
    for f in "${added[@]}"; do git -C "$z" add -f "$f"; done
    git -C "$z" "${git_id[@]}" commit -qm "Zephyr v4.3.0 (from local sources, see ivnet's scripts/workspace.sh)"
    git -C "$z" "${git_id[@]}" tag -a v4.3.0 -m v4.3.0
  fi
}

# The ref to take of a module: the one asked for, else Zephyr 4.3's pin when the repository
# has it, else its newest commit (said so).
pin_or_newest() {
  local name=$1 src=$2 asked=$3 pin=$4 g
  if [ -n "$asked" ]; then echo "$asked"; return; fi
  g=$(gitdir "$src" "$name")
  if has_ref "$g" "$pin"; then echo "$pin"; return; fi
  log "$name: Zephyr 4.3's pin ${pin:0:12} is not in $src; using its newest, $(git --git-dir="$g" rev-parse --short=12 HEAD)" >&2
  git --git-dir="$g" rev-parse HEAD
}

# A module cloned from a local repository at `ref` (or extracted when cloning cannot check it
# out: a snapshot without some blobs).
module() {
  local name=$1 src=$2 ref=$3 dest=$4 must=$5
  shift 5
  local g
  g=$(gitdir "$src" "$name")
  has_ref "$g" "$ref" || die "$name: $src has no commit $ref"
  rm -rf "$dest"
  if git clone -q --no-checkout "$g" "$dest" 2>/dev/null &&
     git -C "$dest" -c advice.detachedHead=false checkout -q "$ref" 2>/dev/null; then
    log "$name: $ref"
  else
    rm -rf "$dest"
    log "$name: $ref does not check out whole here; extracting what it needs"
    extract "$g" "$ref" "" "$dest" "$must" "$@"
  fi
}

# The modules named by IVNET_*_SRC, cloned at the paths Zephyr's west.yml gives them (so the
# build finds them without `west update`). `add` (an existing workspace): only those it lacks,
# said so; otherwise each not named is warned about.
local_modules() {
  local add=${1:-}
  # want NAME VAR PATH: whether to install module NAME (sources in ${VAR}_SRC) at $ws/PATH.
  want() {
    local src_var=$2_SRC
    if [ -z "${!src_var:-}" ]; then return 1; fi
    if [ -n "$add" ] && [ -e "$ws/$3" ]; then return 1; fi
    [ -z "$add" ] || log "adding $1 to the existing workspace (from \$$src_var)"
    return 0
  }
  if want zcbor IVNET_ZCBOR modules/lib/zcbor; then
    module zcbor "$IVNET_ZCBOR_SRC" "${IVNET_ZCBOR_REF:-$ZCBOR_PIN}" "$ws/modules/lib/zcbor" zephyr/module.yml
  elif [ -z "$add" ]; then
    log "WARNING: IVNET_ZCBOR_SRC not set: no zcbor, so no cell image (MCUmgr needs it)"
  fi
  if want picolibc IVNET_PICOLIBC modules/lib/picolibc; then
    # Its test/ folder is not needed to build.
    module picolibc "$IVNET_PICOLIBC_SRC" "$(pin_or_newest picolibc "$IVNET_PICOLIBC_SRC" "${IVNET_PICOLIBC_REF:-}" "$PICOLIBC_PIN")" \
      "$ws/modules/lib/picolibc" zephyr/module.yml ':!test'
  elif [ -z "$add" ]; then
    log "WARNING: IVNET_PICOLIBC_SRC not set: no picolibc, so Zephyr samples that need POSIX_API will not build"
  fi
  if want mbedtls IVNET_MBEDTLS modules/crypto/mbedtls; then
    module mbedtls "$IVNET_MBEDTLS_SRC" "$(pin_or_newest mbedtls "$IVNET_MBEDTLS_SRC" "${IVNET_MBEDTLS_REF:-}" "$MBEDTLS_PIN")" \
      "$ws/modules/crypto/mbedtls" zephyr/module.yml ':!tests' ':!programs' ':!visualc' ':!docs'
  elif [ -z "$add" ]; then
    log "WARNING: IVNET_MBEDTLS_SRC not set: no mbedtls, so Zephyr's HTTP server sample will not build"
  fi
  if want open-amp IVNET_OPENAMP modules/lib/open-amp; then
    module open-amp "$IVNET_OPENAMP_SRC" "$(pin_or_newest open-amp "$IVNET_OPENAMP_SRC" "${IVNET_OPENAMP_REF:-}" "$OPENAMP_PIN")" \
      "$ws/modules/lib/open-amp" zephyr/module.yml
  elif [ -z "$add" ]; then
    log "WARNING: IVNET_OPENAMP_SRC not set: no open-amp, so Zephyr's C eth_ivshmem (-S ivshmem2-eth) will not build"
  fi
  if want libmetal IVNET_LIBMETAL modules/hal/libmetal; then
    module libmetal "$IVNET_LIBMETAL_SRC" "$(pin_or_newest libmetal "$IVNET_LIBMETAL_SRC" "${IVNET_LIBMETAL_REF:-}" "$LIBMETAL_PIN")" \
      "$ws/modules/hal/libmetal" zephyr/module.yml
  elif [ -z "$add" ]; then
    log "WARNING: IVNET_LIBMETAL_SRC not set: no libmetal, so Zephyr's C eth_ivshmem (-S ivshmem2-eth) will not build"
  fi
  if want zephyr-lang-rust IVNET_RUST modules/lang/rust; then
    module zephyr-lang-rust "$IVNET_RUST_SRC" "${IVNET_RUST_REF:-$RUST_PIN}" "$ws/modules/lang/rust" zephyr/module.yml
  elif [ -z "$add" ]; then
    log "WARNING: IVNET_RUST_SRC not set: no zephyr-lang-rust, so the ivnet driver will not build (it uses its zephyr crate)"
  fi
}

from_local() {
  local g ref=${IVNET_ZEPHYR_REF:-v4.3.0} sub=${IVNET_ZEPHYR_SUBDIR:-}
  g=$(gitdir "$IVNET_ZEPHYR_SRC" IVNET_ZEPHYR_SRC)
  has_ref "$g" "$ref" || die "IVNET_ZEPHYR_SRC: $IVNET_ZEPHYR_SRC has no commit $ref (set IVNET_ZEPHYR_REF)"
  mkdir -p "$ws"
  log "Zephyr from $IVNET_ZEPHYR_SRC at $ref${sub:+, folder $sub}"
  rm -rf "$ws/zephyr.partial"
  extract "$g" "$ref" "$sub" "$ws/zephyr.partial" VERSION
  grep -q '^VERSION_MAJOR = 4' "$ws/zephyr.partial/VERSION" && grep -q '^VERSION_MINOR = 3' "$ws/zephyr.partial/VERSION" ||
    die "IVNET_ZEPHYR_SRC: $ref${sub:+:$sub} is not Zephyr 4.3 ($(tr '\n' ' ' <"$ws/zephyr.partial/VERSION"))"
  fix_zephyr "$ws/zephyr.partial"

  local_modules
  mv "$ws/zephyr.partial" "$ws/zephyr"
  (cd "$ws" && "$west" init -l zephyr >/dev/null && "$west" config manifest.group-filter -- +optional)
}

from_github() {
  log "Zephyr v4.3.0 from GitHub (west init + west update of picolibc, zcbor, zephyr-lang-rust, mbedtls, open-amp, libmetal)"
  mkdir -p "$ws"
  (cd "$ws" &&
    "$west" init -m https://github.com/zephyrproject-rtos/zephyr --mr v4.3.0 . &&
    "$west" config manifest.group-filter -- +optional &&
    "$west" config manifest.project-filter -- '-.*,+picolibc,+zcbor,+zephyr-lang-rust,+mbedtls,+open-amp,+libmetal' &&
    "$west" update --narrow -o=--depth=1)
}

if [ -d "$ws/zephyr" ] && [ -f "$ws/zephyr/VERSION" ]; then
  log "Zephyr workspace at $ws exists; left as it is (but for modules it lacks whose sources are named)"
  local_modules add
  exit 0
fi
[ -x "$venv/bin/west" ] || die "no west in $venv (run scripts/bootstrap.sh, which creates it)"
west="$venv/bin/west"

if [ -n "${IVNET_ZEPHYR_SRC:-}" ]; then
  from_local
elif timeout 20 git ls-remote --exit-code https://github.com/zephyrproject-rtos/zephyr refs/tags/v4.3.0 >/dev/null 2>&1; then
  from_github
else
  die "no Zephyr workspace at $ws, GitHub is not reachable, and IVNET_ZEPHYR_SRC names no local
copy. Name the local sources (docs/zephyr-workspace.md), e.g.
  IVNET_ZEPHYR_SRC=<git dir> IVNET_ZEPHYR_REF=<commit> IVNET_ZEPHYR_SUBDIR=<folder>
  IVNET_ZCBOR_SRC=<git dir> IVNET_PICOLIBC_SRC=<git dir> IVNET_MBEDTLS_SRC=<git dir>
  IVNET_OPENAMP_SRC=<git dir> IVNET_LIBMETAL_SRC=<git dir> scripts/bootstrap.sh"
fi
log "Zephyr workspace ready at $ws"
