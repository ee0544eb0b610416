"""distill: knowledge distillation from teacher to monitored student.

The core library. It never imports prefect, mlflow, evidently or dvc; flows/,
tasks/ and monitoring/ adapt it to those.
"""

__version__ = "0.1.0"
