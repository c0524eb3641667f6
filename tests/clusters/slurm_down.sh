#!/bin/bash
# Stop what slurm_up.sh DIR started, by pid (never by name).
D=$(realpath -m "$1")
for p in slurmd slurmctld slurmdbd; do [ -f $D/run/$p.fg.pid ] && kill $(cat $D/run/$p.fg.pid) 2>/dev/null; done
sleep 1
[ -f $D/run/mysqld.fg.pid ] && kill $(cat $D/run/mysqld.fg.pid) 2>/dev/null
[ -f $D/run/munged.fg.pid ] && kill $(cat $D/run/munged.fg.pid) 2>/dev/null
for i in $(seq 100); do
  alive=0; for f in $D/run/*.fg.pid; do kill -0 $(cat $f) 2>/dev/null && alive=1; done
  [ $alive = 0 ] && break; sleep 0.1
done
echo "stopped (alive=$alive)"
