#!/usr/bin/env bash
# Start Open WebUI in front of a running cascade, for a manual check of a stateless chat UI
# (full history each turn, no session_id). For an operator at a keyboard; CI does not run it.
#
#   OPENAI_API_BASE_URL=http://127.0.0.1:8080/v1 OPENAI_API_KEY=your-cascade-key \
#     scripts/open-webui.sh
#
# Then open http://127.0.0.1:3000 (single-user mode, no login). With docker available the
# official image runs (host network, so it reaches a cascade on 127.0.0.1); otherwise
# `open-webui` is pip-installed into its own venv (Python 3.11 or 3.12).
#
# Environment (all optional):
#   OPENAI_API_BASE_URL   cascade's /v1 URL          (default http://127.0.0.1:8080/v1)
#   OPENAI_API_KEY        a cascade client key       (default "none": cascade without keys)
#   OPEN_WEBUI_PORT       where Open WebUI listens   (default 3000)
#   OPEN_WEBUI_VERSION    the release to run         (default 0.12.4)
#   OPEN_WEBUI_MODE       auto | docker | pip        (default auto)
#   OPEN_WEBUI_VENV       the pip mode's venv        (default ./state/open-webui/venv)
#   OPEN_WEBUI_DATA       Open WebUI's data folder   (default ./state/open-webui/data)
#   PYTHON                the pip mode's interpreter (default python3)
set -euo pipefail

api_base="${OPENAI_API_BASE_URL:-http://127.0.0.1:8080/v1}"
api_base="${api_base%/}"
api_key="${OPENAI_API_KEY:-none}"
port="${OPEN_WEBUI_PORT:-3000}"
version="${OPEN_WEBUI_VERSION:-0.12.4}"
mode="${OPEN_WEBUI_MODE:-auto}"
venv="${OPEN_WEBUI_VENV:-./state/open-webui/venv}"
data="${OPEN_WEBUI_DATA:-./state/open-webui/data}"
python="${PYTHON:-python3}"

die() {
  echo "open-webui.sh: $*" >&2
  exit 1
}

# Fail early and clearly: Open WebUI itself only logs a failed model list and shows no models.
if ! curl -fsS --max-time 5 -H "Authorization: Bearer ${api_key}" "${api_base}/models" \
  >/dev/null; then
  die "cascade does not answer at ${api_base}/models (start it with 'make run'; check the key)"
fi

if [[ "${mode}" == auto ]]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    mode=docker
  else
    mode=pip
  fi
fi

mkdir -p "${data}"
# Open WebUI's own settings for this check: cascade is its only backend (no Ollama probing),
# single-user mode, and the environment wins over settings saved by an earlier run.
settings=(
  "OPENAI_API_BASE_URL=${api_base}"
  "OPENAI_API_KEY=${api_key}"
  "ENABLE_OLLAMA_API=false"
  "WEBUI_AUTH=false"
  "ENABLE_PERSISTENT_CONFIG=false"
)

case "${mode}" in
  docker)
    env_args=()
    for setting in "${settings[@]}"; do
      env_args+=(-e "${setting}")
    done
    echo "Open WebUI ${version} (container) on http://127.0.0.1:${port}, backend ${api_base}"
    exec docker run --rm --network host -e "PORT=${port}" -e "HOST=127.0.0.1" "${env_args[@]}" \
      -v "$(cd "${data}" && pwd):/app/backend/data" "ghcr.io/open-webui/open-webui:v${version}"
    ;;
  pip)
    if [[ ! -x "${venv}/bin/open-webui" ]]; then
      "${python}" -m venv "${venv}"
      "${venv}/bin/pip" install -q "open-webui==${version}"
    fi
    echo "Open WebUI ${version} (venv ${venv}) on http://127.0.0.1:${port}, backend ${api_base}"
    exec env "${settings[@]}" "DATA_DIR=$(cd "${data}" && pwd)" \
      "${venv}/bin/open-webui" serve --host 127.0.0.1 --port "${port}"
    ;;
  *)
    die "OPEN_WEBUI_MODE must be auto, docker or pip (not '${mode}')"
    ;;
esac
