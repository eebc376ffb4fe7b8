/** The share links of /dispatch's rows: each active parcel's "Share link" controls (share.js). */

import { allShareControls } from "./share.js";

allShareControls();
