-- Enqueued-token limits of native provider batches (api/src/native.rs): each upstream
-- batch records the prompt tokens it puts in its deployment's queue, so the driver keeps
-- a deployment's submitted batches under the provider's enqueued-token limit.
ALTER TABLE native_batches ADD COLUMN tokens bigint NOT NULL DEFAULT 0;
CREATE INDEX native_batches_in_flight ON native_batches (deployment)
    WHERE state IN ('submitting', 'submitted');
