"""The SLURM pre-flight's reading of `scontrol show config` and its model of the executor's status command."""

from gbm.jobs.slurm import effective_status_command, min_job_age

CONFIG = """Configuration data as of 2026-11-25T08:00:00
MessageTimeout          = 10 sec
MinJobAge               = {} 
MpiDefault              = none
"""


def test_min_job_age_reads_seconds_minutes_and_hours():
    assert min_job_age(CONFIG.format("300 sec")) == 300
    assert min_job_age(CONFIG.format("300")) == 300
    assert min_job_age(CONFIG.format("5 min")) == 300
    assert min_job_age(CONFIG.format("1 hours")) == 3600
    assert min_job_age("MessageTimeout = 10 sec\n") is None


def test_squeue_is_used_only_when_min_job_age_outlasts_three_first_status_delays():
    assert effective_status_command("squeue", 40, sacct_installed=True, job_age=300) == "squeue"
    assert effective_status_command("squeue", 40, sacct_installed=True, job_age=100) == "sacct"
    assert effective_status_command("squeue", 40, sacct_installed=True, job_age=None) == "sacct"
    assert effective_status_command("squeue", 40, sacct_installed=False, job_age=100) == "squeue"


def test_sacct_is_the_default_whenever_it_is_installed():
    assert effective_status_command(None, 40, sacct_installed=True, job_age=300) == "sacct"
    assert effective_status_command(None, 40, sacct_installed=False, job_age=300) == "squeue"
    assert effective_status_command("sacct", 40, sacct_installed=False, job_age=300) == "squeue"
