-- Fewer index writes per job (issue 20). A job row is written three times (the api's
-- insert, a worker's claim, its end) and every write is a new row version with an entry in
-- each of its indexes (its status is indexed, so no update is HOT).
--
-- `jobs_status_created` took an entry on every one of them, and no statement reads it by
-- `created_at`. What it served is listing jobs by status, newest first
-- (core/src/store/job_list.rs): queued and running jobs are found by
-- `jobs_unfinished_updated`, succeeded ones are most of the table (a backward scan of the
-- primary key finds them at once), and the ends that are few get the index below, which
-- takes an entry only when a job ends that way.
DROP INDEX jobs_status_created;
CREATE INDEX jobs_ended_unsuccessfully ON jobs (id) WHERE status IN ('failed', 'cancelled', 'expired');

-- An attempt row is inserted when its call starts and updated once when it ends, wider
-- (usage, cost, times). Leaving room in each page lets that update stay on its page
-- without a new primary key entry (a HOT update); the finished rows then fill the page.
ALTER TABLE job_attempts SET (fillfactor = 60);
