-- Webhook delivery outcome per job (DESIGN §4).
ALTER TABLE jobs ADD COLUMN webhook_status text;
ALTER TABLE jobs ADD COLUMN webhook_attempts integer;
