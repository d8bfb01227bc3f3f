DROP TRIGGER IF EXISTS applications_audit ON applications;
DROP FUNCTION IF EXISTS audit_applications();
DROP TABLE IF EXISTS audit_logs;
DROP TYPE IF EXISTS audit_action;
