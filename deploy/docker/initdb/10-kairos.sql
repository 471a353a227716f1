-- The compose PostgreSQL's databases besides the instance's (POSTGRES_DB=dagster): the DuckLake catalog
-- and the Optuna studies. Runs once, when the data volume is first created.
CREATE DATABASE kairos_lake;
CREATE DATABASE optuna;
