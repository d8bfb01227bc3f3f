DROP TABLE IF EXISTS application_deployments;
DROP TABLE IF EXISTS applications;
DROP TYPE IF EXISTS environment;
DROP TYPE IF EXISTS build_pack;
