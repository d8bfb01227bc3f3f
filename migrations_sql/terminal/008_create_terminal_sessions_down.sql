DROP TABLE IF EXISTS terminal_sessions;
