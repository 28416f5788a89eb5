-- Parameters an attempt dropped because its provider cannot take them (drop_params: true).
ALTER TABLE job_attempts ADD COLUMN dropped_params jsonb;
