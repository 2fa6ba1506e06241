/** Process entry of the CLI: the only place that hands the process's argv and env to it. */
import { main } from './main.js'

await main(process.argv, process.env)
