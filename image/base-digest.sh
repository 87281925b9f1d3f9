#!/bin/sh
# Look up the manifest (list) digest of BASE_IMAGE from its registry and write image/base-image.lock.
# Usage: image/base-digest.sh [LOCK_FILE]   (default image/base-image.lock; BASE_IMAGE from the
# environment, else from the lock). Tries, in order: docker buildx imagetools, skopeo, docker pull +
# docker inspect. Exits 1, leaving the lock untouched, when none works: a digest is never guessed.
set -eu

lock=${1:-image/base-image.lock}
if [ -z "${BASE_IMAGE:-}" ]; then
    BASE_IMAGE=$(sed -n 's/^BASE_IMAGE=//p' "$lock")
fi
if ! printf '%s\n' "$BASE_IMAGE" | grep -Eqx '[A-Za-z0-9][A-Za-z0-9._/:-]*'; then
    echo "base-digest: BASE_IMAGE must be name[:tag] without a digest (got '$BASE_IMAGE')" >&2
    exit 1
fi
if ! grep -q '^BASE_IMAGE_DIGEST=' "$lock"; then
    echo "base-digest: $lock has no BASE_IMAGE_DIGEST= line" >&2
    exit 1
fi

have() { command -v "$1" >/dev/null 2>&1; }

lookup() {
    if have docker && docker buildx version >/dev/null 2>&1; then
        digest=$(docker buildx imagetools inspect --format '{{.Manifest.Digest}}' "$BASE_IMAGE" 2>/dev/null) \
            && [ -n "$digest" ] && { echo "$digest"; return 0; }
    fi
    if have skopeo; then
        digest=$(skopeo inspect --raw "docker://$BASE_IMAGE" 2>/dev/null | sha256sum | cut -d' ' -f1) \
            && [ "$digest" != "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" ] \
            && { echo "sha256:$digest"; return 0; }
    fi
    if have docker && docker pull --quiet "$BASE_IMAGE" >/dev/null 2>&1; then
        ref=$(docker inspect --format '{{index .RepoDigests 0}}' "$BASE_IMAGE" 2>/dev/null) \
            && { echo "${ref#*@}"; return 0; }
    fi
    return 1
}

if ! digest=$(lookup); then
    echo "base-digest: could not look up $BASE_IMAGE (need docker buildx, skopeo or docker with a reachable registry); $lock unchanged" >&2
    exit 1
fi
if ! printf '%s\n' "$digest" | grep -Eqx 'sha256:[0-9a-f]{64}'; then
    echo "base-digest: the registry answered '$digest', which is not a sha256 digest; $lock unchanged" >&2
    exit 1
fi
tmp="$lock.tmp.$$"
sed -e "s|^BASE_IMAGE=.*|BASE_IMAGE=$BASE_IMAGE|" -e "s|^BASE_IMAGE_DIGEST=.*|BASE_IMAGE_DIGEST=$digest|" "$lock" >"$tmp"
mv "$tmp" "$lock"
echo "$BASE_IMAGE@$digest"
