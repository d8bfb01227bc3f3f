-- A nested module: integrations/github.
CREATE TABLE github_connectors (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    organization_id UUID NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    app_id VARCHAR(50) NOT NULL,
    slug VARCHAR(255) NOT NULL,
    pem TEXT NOT NULL,
    webhook_secret TEXT NOT NULL,
    installation_id VARCHAR(50),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX idx_github_connectors_org_app ON github_connectors (organization_id, app_id);
CREATE TRIGGER github_connectors_set_updated_at BEFORE UPDATE ON github_connectors
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
