-- What an incident said when it fired, for the host and rack pages' earlier firings (the
-- alert's own row keeps only its latest).
ALTER TABLE incidents ADD COLUMN description TEXT NOT NULL DEFAULT '';
