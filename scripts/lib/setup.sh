# Shared by scripts/demo and scripts/test: install what is missing, nothing more.

# ensure_debs PACKAGE... : install Debian packages that are not installed yet.
ensure_debs() {
  local missing=()
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$package")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
      sudo="sudo"
    else
      echo "expiryd: missing Debian packages: ${missing[*]}" >&2
      echo "expiryd: run: sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
      exit 1
    fi
  fi
  echo "installing ${missing[*]} with apt-get ..." >&2
  $sudo apt-get update -qq >/dev/null
  # policy-rc.d-free machines would start the system services: we only want the binaries.
  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

# ensure_venv EXTRAS : a .venv with this package installed (editable), reinstalled when
# pyproject.toml changes.
ensure_venv() {
  local spec=".$1"
  local stamp=".venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)${1//[^a-z]/}"
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -e "$spec"
    rm -f .venv/.installed-*
    touch "$stamp"
  fi
}
