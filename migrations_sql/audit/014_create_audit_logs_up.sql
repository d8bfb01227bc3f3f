CREATE TYPE audit_action AS ENUM ('create', 'update', 'delete', 'access');

CREATE TABLE audit_logs (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    user_id UUID REFERENCES users (id) ON DELETE SET NULL,
    organization_id UUID REFERENCES organizations (id) ON DELETE CASCADE,
    action audit_action NOT NULL,
    resource_type VARCHAR(50) NOT NULL,
    resource_id UUID,
    old_values JSONB,
    new_values JSONB,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_audit_logs_org_created ON audit_logs (organization_id, created_at DESC);

-- Write an audit row for every change to applications.
CREATE OR REPLACE FUNCTION audit_applications() RETURNS trigger AS $body$
BEGIN
    INSERT INTO audit_logs (user_id, organization_id, action, resource_type, resource_id, old_values, new_values)
    VALUES (
        COALESCE(NEW.user_id, OLD.user_id),
        COALESCE(NEW.organization_id, OLD.organization_id),
        CASE TG_OP WHEN 'INSERT' THEN 'create' WHEN 'UPDATE' THEN 'update' ELSE 'delete' END::audit_action,
        'application',
        COALESCE(NEW.id, OLD.id),
        CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
        CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END
    );
    RETURN COALESCE(NEW, OLD);
END;
$body$ LANGUAGE plpgsql;

CREATE TRIGGER applications_audit AFTER INSERT OR UPDATE OR DELETE ON applications
    FOR EACH ROW EXECUTE FUNCTION audit_applications();
-- a trailing comment without a newline