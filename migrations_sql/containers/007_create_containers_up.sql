CREATE TABLE containers (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    application_id UUID REFERENCES applications (id) ON DELETE SET NULL,
    organization_id UUID NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    docker_id VARCHAR(64) NOT NULL UNIQUE,
    image TEXT NOT NULL,
    status VARCHAR(20) NOT NULL,
    labels JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_containers_labels ON containers USING gin (labels);
