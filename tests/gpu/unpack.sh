#!/usr/bin/env bash
# On the GPU machine, once every part is in /tmp/parts: check and unpack the bundle into /tmp/lk
# (site/ for PYTHONPATH, the MinIO server). README.md beside this file says how the parts get there.
set -euo pipefail
rm -rf /tmp/lk && mkdir -p /tmp/lk/site
cat /tmp/parts/bundle.part-* | tar -xf - -C /tmp/lk
(cd /tmp/lk && sha256sum -c --quiet SHA256SUMS)
xz -T0 -dc /tmp/lk/site.tar.xz | tar -xf - -C /tmp/lk/site
if [ -f /tmp/lk/trl.tar.xz ]; then  # TRL for algorithm: rm, kept out of site/ (verl breaks when TRL 1.x imports)
  mkdir -p /tmp/lk/trl && xz -T0 -dc /tmp/lk/trl.tar.xz | tar -xf - -C /tmp/lk/trl && rm -f /tmp/lk/trl.tar.xz
fi
xz -T0 -d -f /tmp/lk/minio.xz && chmod +x /tmp/lk/minio
rm -f /tmp/lk/site.tar.xz
echo "unpacked $(du -sh /tmp/lk/site | cut -f1) into /tmp/lk/site"
