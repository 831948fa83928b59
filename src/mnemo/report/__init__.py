"""Tables (DuckDB SQL over the stages' Parquet files) and matplotlib figures for the report."""
