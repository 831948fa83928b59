-- Wall time and peak memory per job, from Snakemake's benchmark files.
SELECT job, round(s, 1) AS seconds, round(max_rss, 0) AS max_rss_mb, round(cpu_time, 1) AS cpu_seconds
FROM benchmarks
ORDER BY s DESC
