#!/bin/sh
# Docker daemon options from flannel's subnet.env, at the path Go flannel
# ships its script (dist/mk-docker-opts.sh; /opt/bin in the image). Same
# flags, output and exit statuses; the work is done by
# `flanneld mk-docker-opts` (see `flanneld mk-docker-opts -h`).
#
#   mk-docker-opts.sh [-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE] [-i] [-c] [-m] [-k COMBINED-KEY]
#
# flanneld is looked for next to this script first (/opt/bin in the image),
# then on PATH; FLANNELD names it explicitly.
here=$(dirname "$0")
if [ -n "$FLANNELD" ]; then
	flanneld=$FLANNELD
elif [ -x "$here/flanneld" ]; then
	flanneld=$here/flanneld
elif command -v flanneld >/dev/null 2>&1; then
	flanneld=flanneld
else
	echo "$0: flanneld not found next to this script or on PATH (set FLANNELD)" >&2
	exit 1
fi
exec "$flanneld" mk-docker-opts "$@"
