DROP TABLE IF EXISTS smtp_configs;
DROP TABLE IF EXISTS notification_preferences;
