"""The driver scripts of scenario 5 (bench_peers.py): one small program per engine.

Each is run by the engine's own virtualenv's Python, so it may import only the standard
library and its engine.
"""

from __future__ import annotations

# Every driver is DRIVER_HEAD + a peer's body (which defines setup()) + DRIVER_TAIL, run as
# ``python driver.py <home> <runs> <result.json>``. setup() imports the engine, so the first
# run's time includes the import; it returns (version, run_once).
DRIVER_HEAD = """
import json, os, subprocess, sys, time
from pathlib import Path

HOME, RUNS, RESULT = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
STEPS = int(os.environ.get("BENCH_PEER_STEPS", "5"))


def bash_true():
    subprocess.run(["bash", "-c", "true"], check=True)
"""

DRIVER_TAIL = """
version, run_once = setup()
times = []
first_done = None
for i in range(RUNS + 1):
    t0 = time.perf_counter()
    run_once(i)
    times.append(time.perf_counter() - t0)
    if first_done is None:
        first_done = time.time()
RESULT.write_text(json.dumps({
    "version": version,
    "first_done": first_done,
    "first_run": times[0],
    "runs": times[1:],
    # VmHWM, not ru_maxrss: ru_maxrss also counts the spawning parent's pages before exec
    "self_hwm_kb": int(next(
        line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")
    )),
}))
"""

LUIGI_BODY = '''
def setup():
    import luigi

    class Step(luigi.Task):
        """One Bash step; it requires the one before and writes a marker target."""

        run_id = luigi.Parameter()
        index = luigi.IntParameter()

        def requires(self):
            return Step(run_id=self.run_id, index=self.index - 1) if self.index else []

        def output(self):
            return luigi.LocalTarget(str(HOME / self.run_id / f"s{self.index}.done"))

        def run(self):
            bash_true()
            with self.output().open("w") as out:
                out.write("ok")

    def run_once(i):
        ok = luigi.build(
            [Step(run_id=f"run{i}", index=STEPS - 1)], local_scheduler=True, log_level="WARNING"
        )
        if not ok:
            raise RuntimeError(f"luigi run {i} failed")

    return luigi.__version__, run_once
'''

PREFECT_BODY = """
def setup():
    import prefect
    from prefect import flow, task

    @task
    def step(index, upstream):
        bash_true()
        return index

    @flow
    def chain():
        upstream = None
        for index in range(STEPS):
            upstream = step(index, upstream)
        return upstream

    def run_once(i):
        if chain() != STEPS - 1:
            raise RuntimeError(f"prefect run {i} failed")

    return prefect.__version__, run_once
"""

AIRFLOW_DAG = """
import pendulum

try:  # Airflow 3
    from airflow.sdk import DAG, chain
    from airflow.providers.standard.operators.bash import BashOperator
except ImportError:  # Airflow 2
    from airflow import DAG
    from airflow.models.baseoperator import chain
    from airflow.operators.bash import BashOperator

with DAG(
    "bench_chain",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
) as dag:
    chain(*[BashOperator(task_id=f"s{i}", bash_command="true") for i in range(5)])
"""

# dag.test() is what `airflow dags test <dag_id>` runs after loading the DAG; calling it
# here lets later runs reuse the process, as the other peers do.
AIRFLOW_BODY = f"""
DAG_SOURCE = {AIRFLOW_DAG!r}


def setup():
    import importlib.util

    import airflow

    path = HOME / "dags" / "bench_chain.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(DAG_SOURCE)
    spec = importlib.util.spec_from_file_location("bench_chain", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def run_once(i):
        dag_run = module.dag.test()
        state = str(getattr(dag_run, "state", "")).lower()
        if "success" not in state:
            raise RuntimeError(f"airflow run {{i}} ended {{state}}")

    return airflow.__version__, run_once
"""

# runbook-celery, driven the same way: a fresh client process against the harness's
# already-running worker and Redis; BENCH_PEER_WORKFLOW names the 5-step chain file.
RUNBOOK_BODY = """
def setup():
    from importlib.metadata import version

    from runbook_celery.client.api import submit

    path = os.environ["BENCH_PEER_WORKFLOW"]

    def run_once(i):
        record = submit(path).wait()
        if record.status != "succeeded":
            raise RuntimeError(f"runbook-celery run {i} {record.status}")

    return version("runbook-celery"), run_once
"""


def driver_source(body: str) -> str:
    """The whole driver script for one engine."""
    return DRIVER_HEAD + body + DRIVER_TAIL
