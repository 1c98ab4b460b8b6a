# about: the query each domain answers for a federated query (network/federate.py).
# about: each case is the analyst's query on federated.DATASET.TABLE, then the domain query
# about: (DuckDB, catalog stripped, keys as __gN, mergeable parts as __pN); the optional
# about: header `dialect` names the analyst's dialect.

# title: COUNT(*) over the whole table
SELECT COUNT(*) AS n FROM federated.oncology.screenings;
SELECT COUNT(*) AS __p0 FROM oncology.screenings;

# title: AVG becomes SUM and COUNT of its argument, per group
SELECT site, AVG(age) AS mean_age FROM federated.oncology.screenings GROUP BY site;
SELECT site AS __g0, SUM(age) AS __p0, COUNT(age) AS __p1 FROM oncology.screenings GROUP BY site;

# title: parts are shared: COUNT(x), SUM(x) and AVG(x) need two parts, not four
SELECT COUNT(age), SUM(age), AVG(age), COUNT(*) FROM federated.oncology.screenings;
SELECT COUNT(age) AS __p0, SUM(age) AS __p1, COUNT(*) AS __p2 FROM oncology.screenings;

# title: every variance and standard deviation needs COUNT, AVG and VAR_POP
SELECT VAR_SAMP(age), VARIANCE(age), VAR_POP(age), STDDEV(age), STDDEV_SAMP(age), STDDEV_POP(age) FROM federated.oncology.screenings;
SELECT COUNT(age) AS __p0, AVG(age) AS __p1, VAR_POP(age) AS __p2 FROM oncology.screenings;

# title: MIN and MAX pass through
SELECT site, MIN(age) AS youngest, MAX(age) AS oldest FROM federated.oncology.screenings GROUP BY site;
SELECT site AS __g0, MIN(age) AS __p0, MAX(age) AS __p1 FROM oncology.screenings GROUP BY site;

# title: a key that is an expression, grouped by its alias; WHERE goes to the domains
SELECT EXTRACT(year FROM screened_on) AS y, COUNT(*) AS n FROM federated.oncology.screenings WHERE age >= 40 GROUP BY y;
SELECT EXTRACT(year FROM screened_on) AS __g0, COUNT(*) AS __p0 FROM oncology.screenings WHERE age >= 40 GROUP BY EXTRACT(year FROM screened_on);

# title: a CASE key grouped by position, and a second key
SELECT CASE WHEN age < 50 THEN 'under 50' ELSE '50+' END AS band, site, SUM(tumor_size_mm) FROM federated.oncology.screenings GROUP BY 1, 2;
SELECT CASE WHEN age < 50 THEN 'under 50' ELSE '50+' END AS __g0, site AS __g1, SUM(tumor_size_mm) AS __p0 FROM oncology.screenings GROUP BY CASE WHEN age < 50 THEN 'under 50' ELSE '50+' END, site;

# title: arithmetic over aggregates stays at the network; the domains send the parts
SELECT site, SUM(age) / COUNT(*) AS ratio, ROUND(AVG(age), 2) AS mean_age FROM federated.oncology.screenings GROUP BY site;
SELECT site AS __g0, SUM(age) AS __p0, COUNT(*) AS __p1, COUNT(age) AS __p2 FROM oncology.screenings GROUP BY site;

# title: aggregates in HAVING and ORDER BY are parts too; HAVING, ORDER BY and LIMIT are not sent
SELECT site FROM federated.oncology.screenings GROUP BY site HAVING COUNT(*) > 10 ORDER BY MAX(age) DESC LIMIT 3;
SELECT site AS __g0, COUNT(*) AS __p0, MAX(age) AS __p1 FROM oncology.screenings GROUP BY site;

# title: the table alias stays; f.age and age are one part
SELECT f.site, SUM(f.age), SUM(age) AS again FROM federated.oncology.screenings AS f WHERE f.age > 0 GROUP BY f.site;
SELECT f.site AS __g0, SUM(f.age) AS __p0 FROM oncology.screenings AS f WHERE f.age > 0 GROUP BY f.site;

# title: fully qualified columns lose the catalog
SELECT federated.oncology.screenings.site, COUNT(*) FROM federated.oncology.screenings GROUP BY federated.oncology.screenings.site;
SELECT oncology.screenings.site AS __g0, COUNT(*) AS __p0 FROM oncology.screenings GROUP BY oncology.screenings.site;

# title: GROUP BY ALL groups by every select item without an aggregate
SELECT site, result, COUNT(*) FROM federated.oncology.screenings GROUP BY ALL;
SELECT site AS __g0, result AS __g1, COUNT(*) AS __p0 FROM oncology.screenings GROUP BY site, result;

# title: a GROUP BY without aggregates merges the distinct keys
SELECT site FROM federated.oncology.screenings GROUP BY site;
SELECT site AS __g0 FROM oncology.screenings GROUP BY site;

# title: another dialect is read as written and sent as DuckDB
# dialect: tsql
SELECT TOP 5 site, COUNT_BIG(*) AS n FROM federated.oncology.screenings WHERE LEN(site) > 2 GROUP BY site ORDER BY n DESC;
SELECT site AS __g0, COUNT(*) AS __p0 FROM oncology.screenings WHERE LENGTH(CAST(site AS TEXT)) > 2 GROUP BY site;
