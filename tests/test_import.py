import subprocess
import sys


def test_core_package_imports_no_orchestration_or_tracking_library():
    code = ("import sys, distill, distill.config, distill.data, distill.teacher, distill.label, "
            "distill.students, distill.evaluate, distill.audit, distill.gates, distill.cli;"
            "bad = [m for m in ('prefect', 'mlflow', 'evidently', 'dvc', 'great_expectations') if m in sys.modules];"
            "print(','.join(bad)); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, f"imported at import time: {proc.stdout} {proc.stderr[-500:]}"
