"""Batch predictions: score CSV/Parquet files in-process (a verified model version) or through a
deployment (V2 REST or gRPC), resumable and exact, as `serving batch score`, a Metaflow flow
(flow.py) and the chart's CronJob.

inputs.py    files -> fixed-size chunks of feature rows (+ rows that cannot be scored)
scorers.py   in-process (serving.artifacts.load_verified) or a deployment (REST, gRPC, retries)
outputs.py   Parquet / CSV part files written atomically, or a SQL table (SQLAlchemy)
manifest.py  the finished chunks, so a killed run resumes where it stopped
rejects.py   rows that could not be scored, with the reason and row number
progress.py  a tqdm bar on a terminal, plain lines otherwise
summary.py   the counts at the end
run.py       score(): the one function the command, the flow and the CronJob call
commands.py  the `serving batch` CLI group
"""
