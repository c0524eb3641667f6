#!/bin/bash
# A single-node SLURM cluster for the tests (tests/test_clusters.py): munged, MariaDB (slurmdbd's storage:
# sacct, which submitit polls, needs slurmdbd in SLURM 22.05), slurmdbd, slurmctld and slurmd, as root, every
# key, socket, config, state and log under DIR (nothing in /etc, /run, /var). Daemons run in the foreground
# as background children; their pids are in DIR/run/*.fg.pid for slurm_down.sh.
# Needs: apt-get install slurmctld slurmd slurm-client slurmdbd munge mariadb-server
# Usage: slurm_up.sh DIR   (then: export SLURM_CONF=DIR/etc/slurm.conf)
set -euo pipefail
D=$(realpath -m "$1"); mkdir -p "$D"; chmod 755 "$D"
H=$(hostname -s)
NODE=$(slurmd -C | head -1)            # "NodeName=vm CPUs=2 Boards=1 ... RealMemory=24105"
mkdir -p $D/munge $D/run $D/etc $D/log $D/spool/ctld $D/spool/d $D/mysql
chmod 700 $D/munge; chmod 755 $D/run     # munged: key dir private; socket dir must be o+x
t0=$(date +%s%N); el() { echo "$1 ready after $(( ($(date +%s%N) - t0) / 1000000 )) ms"; }

# 1. munge (own key + socket; munged runs fine as root)
dd if=/dev/urandom of=$D/munge/munge.key bs=1024 count=1 status=none; chmod 400 $D/munge/munge.key
munged -F --key-file=$D/munge/munge.key --socket=$D/run/munge.sock --pid-file=$D/run/munged.pid \
       --log-file=$D/log/munged.log --seed-file=$D/munge/munged.seed > $D/log/munged.out 2>&1 & echo $! > $D/run/munged.fg.pid
for i in $(seq 50); do [ -S $D/run/munge.sock ] && break; sleep 0.1; done; el munged

# 2. MariaDB on 127.0.0.1:3307 (slurmdbd's storage), datadir in $D
mariadb-install-db --no-defaults --datadir=$D/mysql --user=root --skip-test-db \
    --innodb-log-file-size=8M > $D/log/mysql-install.log 2>&1
mariadbd --no-defaults --datadir=$D/mysql --user=root --socket=$D/run/mysqld.sock --port=3307 \
    --bind-address=127.0.0.1 --pid-file=$D/run/mysqld.pid --log-error=$D/log/mysqld.log \
    --innodb-buffer-pool-size=32M --innodb-log-file-size=8M > /dev/null 2>&1 & echo $! > $D/run/mysqld.fg.pid
for i in $(seq 100); do mariadb --no-defaults -S $D/run/mysqld.sock -uroot -e 'select 1' >/dev/null 2>&1 && break; sleep 0.1; done
mariadb --no-defaults -S $D/run/mysqld.sock -uroot -e "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmpw'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
el mariadb

# 3. configs
cat > $D/etc/slurm.conf <<CONF
ClusterName=pytest
SlurmctldHost=$H
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
AuthInfo=socket=$D/run/munge.sock
CredType=cred/munge
StateSaveLocation=$D/spool/ctld
SlurmdSpoolDir=$D/spool/d
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
ReturnToService=2
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStoragePass=$D/run/munge.sock
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
$NODE State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
cat > $D/etc/slurmdbd.conf <<CONF
AuthType=auth/munge
AuthInfo=socket=$D/run/munge.sock
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=$D/log/slurmdbd.log
PidFile=$D/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3307
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
CONF
chmod 600 $D/etc/slurmdbd.conf            # slurmdbd refuses a group/world-readable slurmdbd.conf
export SLURM_CONF=$D/etc/slurm.conf      # slurmdbd reads slurmdbd.conf from the same directory

# 4. daemons, in the foreground (-D) as children (a fixture can Popen them and kill by pid)
slurmdbd -D > $D/log/slurmdbd.out 2>&1 & echo $! > $D/run/slurmdbd.fg.pid
for i in $(seq 100); do sacctmgr -n show cluster >/dev/null 2>&1 && break; sleep 0.1; done; el slurmdbd
slurmctld -D -i > $D/log/slurmctld.out 2>&1 & echo $! > $D/run/slurmctld.fg.pid
slurmd -D > $D/log/slurmd.out 2>&1 & echo $! > $D/run/slurmd.fg.pid
for i in $(seq 300); do [ "$(sinfo -h -o %T 2>/dev/null)" = idle ] && break; sleep 0.1; done
[ "$(sinfo -h -o %T 2>/dev/null)" = idle ] || { echo "the node never became idle: see $D/log" >&2; exit 1; }
el slurm-idle
sinfo
