CREATE TYPE build_pack AS ENUM ('dockerfile', 'docker-compose', 'static');
CREATE TYPE environment AS ENUM ('development', 'staging', 'production');

CREATE TABLE applications (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    name VARCHAR(255) NOT NULL,
    repository TEXT NOT NULL,
    branch VARCHAR(255) NOT NULL DEFAULT 'main',
    build_pack build_pack NOT NULL DEFAULT 'dockerfile',
    environment environment NOT NULL DEFAULT 'production',
    port INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
    user_id UUID NOT NULL REFERENCES users (id),
    organization_id UUID NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_applications_organization_id ON applications (organization_id);
CREATE TRIGGER applications_set_updated_at BEFORE UPDATE ON applications
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE application_deployments (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    application_id UUID NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    commit_hash VARCHAR(40),
    status VARCHAR(20) NOT NULL DEFAULT 'queued',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_application_deployments_app ON application_deployments (application_id, created_at DESC);
