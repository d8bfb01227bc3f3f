CREATE TABLE domains (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    name VARCHAR(253) NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9.-]+$'),
    organization_id UUID NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    application_id UUID REFERENCES applications (id) ON DELETE SET NULL,
    verified BOOLEAN NOT NULL DEFAULT false,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_domains_organization_id ON domains (organization_id);
CREATE TRIGGER domains_set_updated_at BEFORE UPDATE ON domains
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
