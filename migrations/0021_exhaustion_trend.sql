-- The trend behind each exhaustion date: its shape ('exponential': a constant fraction of the
-- level per day; 'linear': a constant amount per day, fitted when some day had no use at all)
-- and its growth per day in the row's unit now. The rack page draws the trend ahead from
-- them; rows written before this are rewritten at the job's next run.
ALTER TABLE capacity_exhaustion
    ADD COLUMN trend TEXT NOT NULL DEFAULT 'exponential' CHECK (trend IN ('exponential', 'linear')),
    ADD COLUMN growth_unit_per_day DOUBLE PRECISION NOT NULL DEFAULT 0;
