"""cdgan's Prefect flows (cdgan-pipeline, cdgan-sweep, cdgan-tune) and their console scripts, installed beside cdgan."""
